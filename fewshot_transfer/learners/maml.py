"""``maml``: second-order MAML (Finn et al. 2017) on CAP patients, adapted on the k COVID shots.

Inner loop: ``inner_steps`` SGD steps at ``inner_lr`` on a task's support slices; outer
loop: Adam (``meta_lr``) on the query loss after adaptation, differentiated through the
inner steps (``torch.autograd.grad`` through the inner ``torch.func`` steps, so
Hessian-vector products are included). Meta-training starts
from the cached source model, is cached per (config, seed, data) and shared across k; at
meta-test the init takes ``test_steps`` inner-loop steps on the shots. See
``fewshot_transfer/meta/training.py`` and ``docs/meta_learning.md``.
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
class MAML(Learner):
    name = "maml"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "meta_steps": 20}

    @staticmethod
    def search_space(trial) -> dict:
        return meta_search_space(trial, second_order=True)

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return fit_meta(ctx, self.name, MetaConfig.from_params(ctx.params, algorithm="maml", first_order=False))
