"""``fomaml``: first-order MAML — the outer gradient is the query gradient at the adapted weights.

Same tasks, inner loop (``inner_steps`` Adam steps at ``lr``) and common test-time loop as
``maml``; no graph is built through the inner steps (the adapted weights are updated in
place), so a meta-step costs about its forward/backward passes and the default budget has
more meta-steps. With ``meta_steps = 0`` it is finetune.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.meta_base import MetaLearner, meta_hparams


@register
class FOMAML(MetaLearner):
    name = "fomaml"
    first_order = True
    hparams = meta_hparams(second_order=False, meta_steps=60)
