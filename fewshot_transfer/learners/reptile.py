"""``reptile``: Reptile (Nichol et al. 2018) — move the init toward task-adapted weights.

Each task adapts for ``inner_steps`` Adam steps at ``lr`` (the test-time optimizer) on all
its slices (support and query together, Reptile needs no split); the init then moves by
the interpolation ``θ ← θ + ε (φ̄ − θ)`` with ``ε = meta_lr`` and ``φ̄`` the mean adapted
weights (``meta_opt = "sgd"``; ``meta_opt = "adam"`` feeds ``θ − φ̄`` to Adam instead, the
named variant). Tested at the common budget like ``maml``; 0 meta-steps is finetune.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import LogUniform
from fewshot_transfer.learners.meta_base import MetaLearner, meta_hparams

_META = meta_hparams(second_order=False, meta_steps=40)


@register
class Reptile(MetaLearner):
    name = "reptile"
    algorithm = "reptile"
    first_order = True
    hparams = {
        **_META,
        "meta_lr": _META["meta_lr"].but(
            default=0.5,
            help="interpolation factor ε of the outer step",
            low=0.0,
            high=1.0,
            search=LogUniform(0.05, 1.0),
        ),
        "meta_opt": _META["meta_opt"].but(default="sgd"),
    }
