"""``reptile``: Reptile (Nichol et al. 2018) — move the init toward task-adapted weights.

Each task adapts for ``inner_steps`` SGD steps on all its slices (support and query
together); the mean of ``init - adapted`` over the meta-batch is fed to Adam
(``meta_lr``) as the gradient. No second-order terms, no query split needed.
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
class Reptile(Learner):
    name = "reptile"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "inner_steps": 3, "meta_steps": 15}

    @staticmethod
    def search_space(trial) -> dict:
        return meta_search_space(trial, second_order=False)

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return fit_meta(ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="reptile", first_order=True))
