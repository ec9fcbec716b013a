"""``metasgd``: Meta-SGD (Li et al. 2017) — element-wise inner step sizes, meta-learned.

Every parameter gets a rate tensor α (initialized to ``lr``) that the outer loop trains
with the init (Adam, ``meta_lr``, second order) and clamps at 0 after every step. The
inner loop is the test-time Adam update with α in place of ``lr``. Test time: finetune's
loop and budget, each element's update scaled by ``α / lr`` (rates used as learned — the
inner and test step sizes are the same, so there is nothing to rescale); with 0
meta-steps α = ``lr`` and this is finetune. Rates are cached with the weights.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.meta_base import MetaLearner, meta_hparams


@register
class MetaSGD(MetaLearner):
    name = "metasgd"
    learn_lr = True
    hparams = meta_hparams(second_order=True, meta_steps=30)
