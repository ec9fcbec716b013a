"""``anil-control``: ANIL's test-time adaptation without meta-training (ANIL's 0-meta-step control).

The cached source model, then finetune's loop and budget (``steps`` Adam steps at ``lr``
on finetune's stream) on the head only (``head`` as in ``anil``). The paired difference
``anil`` − ``anil-control`` is what ANIL's meta-training adds; ``anil-control`` −
``finetune`` is what freezing the body costs. Its cell summary carries the same
meta-validation loss as ANIL's "before".
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Learner, register
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.meta.training import MetaConfig, fit_meta, head_prefixes
from fewshot_transfer.training import LearnerContext, Segmenter


@register
class ANILControl(Learner):
    name = "anil-control"
    family = "meta"
    uses_source = True
    defaults = {"lr": Finetune.defaults["lr"], "head": "head", "inner_steps": MetaConfig.inner_steps}

    @staticmethod
    def search_space(trial) -> dict:
        return {
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "head": trial.suggest_categorical("head", ["head", "last_block"]),
        }

    def fit(self, ctx: LearnerContext) -> Segmenter:
        prefixes = head_prefixes(ctx.params.head, ctx.new_model())
        return fit_meta(
            ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="maml", adapt=prefixes, meta_steps=0)
        )
