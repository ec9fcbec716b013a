"""``anil``: Almost No Inner Loop (Raghu et al. 2020) — only the head adapts, in both loops.

"Head" is the U-Net's final 1x1 convolution (``head = "head"``) or that plus the last
full-resolution decoder block (``head = "last_block"``). Inner loop: ``inner_steps`` Adam
steps at ``lr`` on the head (the body's features are computed once per task); the outer
loop (second order) meta-trains every parameter, so the body learns features a re-fit
head can use. Test time: finetune's loop and budget (``steps`` Adam steps at ``lr``,
finetune's stream) on the head only. Its control is ``anil-control`` (the same head-only
adaptation of the source model): ``anil`` − ``anil-control`` is what meta-training adds.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, Learner, register
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.meta.training import META_DEFAULTS, MetaConfig, fit_meta, head_prefixes, meta_search_space
from fewshot_transfer.training import LearnerContext, Segmenter


@register
class ANIL(Learner):
    name = "anil"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "lr": Finetune.defaults["lr"], "meta_steps": 60, "head": "head"}
    control = Control(off={"meta_steps": 0})

    @staticmethod
    def search_space(trial) -> dict:
        return {
            **meta_search_space(trial, second_order=True),
            "head": trial.suggest_categorical("head", ["head", "last_block"]),
        }

    def fit(self, ctx: LearnerContext) -> Segmenter:
        prefixes = head_prefixes(ctx.params.head, ctx.new_model())
        return fit_meta(ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="maml", adapt=prefixes))
