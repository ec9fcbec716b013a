"""``anil``: Almost No Inner Loop (Raghu et al. 2020) — the inner loop adapts only the head.

"Head" is the U-Net's final 1x1 convolution (``head.weight``, ``head.bias``) by default
(``head = "head"``); ``head = "last_block"`` adds the last full-resolution decoder block.
The outer loop (second order) meta-trains every parameter, so the body learns features
a quickly re-fit head can use. Meta-test adapts the same head on the k shots.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Learner, register
from fewshot_transfer.training import LearnerContext, Segmenter
from fewshot_transfer.meta.training import (
    META_DEFAULTS,
    MetaConfig,
    fit_meta,
    head_prefixes,
    meta_search_space,
)


@register
class ANIL(Learner):
    name = "anil"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "meta_steps": 30, "head": "head"}

    @staticmethod
    def search_space(trial) -> dict:
        return {**meta_search_space(trial, second_order=True), "head": trial.suggest_categorical("head", ["head", "last_block"])}

    def fit(self, ctx: LearnerContext) -> Segmenter:
        model = ctx.new_model()
        prefixes = head_prefixes(ctx.params.head, model)
        cfg = MetaConfig.from_params(ctx.params, algorithm="maml", first_order=False, adapt=prefixes)
        return fit_meta(ctx, self.name, cfg)
