"""``metasgd``: Meta-SGD (Li et al. 2017) — element-wise inner step sizes, meta-learned.

Every parameter gets a rate tensor α (initialized to ``lr``) that the outer loop trains
with the init (Adam, ``meta_lr``, second order) and clamps at 0 after every step. The
inner loop is the test-time Adam update with α in place of ``lr``. Test time: finetune's
loop and budget, each element's update scaled by ``α / lr`` (rates used as learned — the
inner and test step sizes are the same, so there is nothing to rescale); with 0
meta-steps α = ``lr`` and this is finetune. Rates are cached with the weights.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, Learner, register
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.meta.training import META_DEFAULTS, MetaConfig, fit_meta, meta_search_space
from fewshot_transfer.training import LearnerContext, Segmenter


@register
class MetaSGD(Learner):
    name = "metasgd"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "lr": Finetune.defaults["lr"], "meta_steps": 30}
    control = Control(off={"meta_steps": 0}, same_as="finetune")

    @staticmethod
    def search_space(trial) -> dict:
        return meta_search_space(trial, second_order=True)

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return fit_meta(ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="maml", learn_lr=True))
