"""``fomaml``: first-order MAML — the outer gradient is the query gradient at the adapted weights.

Same tasks, inner loop (``inner_steps`` Adam steps at ``lr``) and common test-time loop as
``maml``; no graph is built through the inner steps (the adapted weights are updated in
place), so a meta-step costs about its forward/backward passes and the default budget has
more meta-steps. With ``meta_steps = 0`` it is finetune.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, Learner, register
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.meta.training import META_DEFAULTS, MetaConfig, fit_meta, meta_search_space
from fewshot_transfer.training import LearnerContext, Segmenter


@register
class FOMAML(Learner):
    name = "fomaml"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "lr": Finetune.defaults["lr"], "meta_steps": 60}
    control = Control(off={"meta_steps": 0}, same_as="finetune")

    @staticmethod
    def search_space(trial) -> dict:
        return meta_search_space(trial, second_order=False)

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return fit_meta(ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="maml", first_order=True))
