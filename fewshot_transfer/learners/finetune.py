"""``finetune``: start from the cached CAP-pretrained backbone and fine-tune on the k shots.

All layers are updated. The learning rate is *higher* than the usual "small lr keeps the
source features" recipe: CAP consolidation (-100..+50 HU) and COVID-19 ground glass
(around -460 HU) differ enough that the pretrained decoder must move a lot. The default,
6e-3, is the best of the 8-trial validation study ``finetune-k5`` behind ``results/tuned``
(0.006075, rounded; the validation split of the support pool, never the test set). It
replaces an earlier 3e-3 picked on one test cell. Learners that adapt like finetune (the
meta-learners' common adaptation, the ``-cap`` semi-supervised learners) inherit it.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, Learner, register
from fewshot_transfer.learners.hparams import LR
from fewshot_transfer.training import LearnerContext, Segmenter, slice_batches, train_supervised


@register
class Finetune(Learner):
    name = "finetune"
    uses_source = True
    hparams = {"lr": LR.but(default=0.006)}
    #: finetune without the CAP initialisation: scratch at finetune's lr
    control = Control(same_as="scratch")

    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        model = ctx.source_model()
        batches = slice_batches(ctx, ctx.support, p.batch_size)
        train_supervised(ctx, model, batches, steps=p.steps, lr=p.lr, phase="target")
        return ctx.segmenter(model)
