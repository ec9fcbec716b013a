"""``reptile``: Reptile (Nichol et al. 2018) — move the init toward task-adapted weights.

Each task adapts for ``inner_steps`` Adam steps at ``lr`` (the test-time optimizer) on all
its slices (support and query together, Reptile needs no split); the init then moves by
the interpolation ``θ ← θ + ε (φ̄ − θ)`` with ``ε = meta_lr`` and ``φ̄`` the mean adapted
weights (``meta_opt = "sgd"``; ``meta_opt = "adam"`` feeds ``θ − φ̄`` to Adam instead, the
named variant). Tested at the common budget like ``maml``; 0 meta-steps is finetune.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, Learner, register
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.meta.training import META_DEFAULTS, MetaConfig, fit_meta, meta_search_space
from fewshot_transfer.training import LearnerContext, Segmenter


@register
class Reptile(Learner):
    name = "reptile"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "lr": Finetune.defaults["lr"], "meta_steps": 40, "meta_opt": "sgd", "meta_lr": 0.5}
    control = Control(off={"meta_steps": 0}, same_as="finetune")
    bounds = {"meta_lr": (0.0, 1.0)}

    @staticmethod
    def search_space(trial) -> dict:
        return meta_search_space(trial, second_order=False, meta_lr=(0.05, 1.0))

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return fit_meta(ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="reptile", first_order=True))
