"""``maml``: second-order MAML (Finn et al. 2017) on CAP patients, tested at the common budget.

Inner loop: ``inner_steps`` Adam steps at ``lr`` on a task's support slices — the
optimizer and step size of the test-time loop; outer loop: Adam (``meta_lr``) on the query
loss after adaptation, differentiated through the inner steps (Hessian-vector products
included). Meta-training starts from the cached source model and is shared across k. At
test time the meta-trained init runs exactly finetune's loop (``steps`` Adam steps at
``lr`` on the shots), so ``maml`` − ``finetune`` (paired) is what meta-training adds; with
``meta_steps = 0`` this learner *is* finetune. MAML's own few-step SGD test is the
``maml-fewstep`` row. See ``fewshot_transfer/meta/training.py`` and ``docs/meta_learning.md``.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, Learner, register
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.meta.training import META_DEFAULTS, MetaConfig, fit_meta, meta_search_space
from fewshot_transfer.training import LearnerContext, Segmenter


@register
class MAML(Learner):
    name = "maml"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "lr": Finetune.defaults["lr"], "meta_steps": 30}
    control = Control(off={"meta_steps": 0}, same_as="finetune")

    @staticmethod
    def search_space(trial) -> dict:
        return meta_search_space(trial, second_order=True)

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return fit_meta(ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="maml", first_order=False))
