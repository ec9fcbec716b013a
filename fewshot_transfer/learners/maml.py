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

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.meta_base import MetaLearner, meta_hparams


@register
class MAML(MetaLearner):
    name = "maml"
    hparams = meta_hparams(second_order=True, meta_steps=30)
