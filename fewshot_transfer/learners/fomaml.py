"""``fomaml``: first-order MAML — the outer gradient is the query gradient at the adapted weights.

Same tasks, inner loop and meta-test as ``maml``; the inner gradients are detached, so a
meta-step costs about as much as the same number of plain forward/backward passes and
can afford more meta-steps for the same budget.
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
class FOMAML(Learner):
    name = "fomaml"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "meta_steps": 40}

    @staticmethod
    def search_space(trial) -> dict:
        return meta_search_space(trial, second_order=False)

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return fit_meta(ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="maml", first_order=True))
