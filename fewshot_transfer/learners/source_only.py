"""``source-only``: train on labeled CAP, apply to COVID-19 unchanged (the zero-shot bound).

It never sees a target label, so its result does not depend on k: the harness runs one
cell per seed and shows it in every k column. At k = 0 it is the reference the gains of
the unsupervised learners are measured against.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Learner, register
from fewshot_transfer.learners.hparams import LR
from fewshot_transfer.training import LearnerContext, Segmenter


@register
class SourceOnly(Learner):
    name = "source-only"
    uses_source = True
    uses_target = False
    k_independent = True
    supports_k0 = True
    #: Nothing to tune: it never trains on the target.
    hparams = {"lr": LR.but(search=None)}

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return ctx.segmenter(ctx.source_model())
