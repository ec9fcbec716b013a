"""``metasgd``: Meta-SGD (Li et al. 2017) — per-parameter inner learning rates, meta-learned.

Every parameter gets an element-wise learning-rate tensor (initialized to ``inner_lr``)
that the outer loop trains with the init (Adam, ``meta_lr``), second order by default.
Meta-test adapts with the learned rates; they are cached with the weights.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Learner, register
from fewshot_transfer.training import LearnerContext, Segmenter
from fewshot_transfer.meta.training import (
    META_DEFAULTS,
    MetaConfig,
    fit_meta,
    meta_search_space,
)


@register
class MetaSGD(Learner):
    name = "metasgd"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "meta_steps": 20, "first_order": False}

    @staticmethod
    def search_space(trial) -> dict:
        return meta_search_space(trial, second_order=True)

    def fit(self, ctx: LearnerContext) -> Segmenter:
        cfg = MetaConfig.from_params(ctx.params, algorithm="maml", learn_lr=True)
        return fit_meta(ctx, self.name, cfg)
