"""``joint``: train one backbone on CAP and the k shots together.

Every step holds the common target budget (``batch_size`` shot rows, drawn with
replacement, the same stream finetune draws) plus ``source_rows(batch_size, source_share)``
labeled CAP rows, one Dice + BCE over all of them. This is the naive multi-domain
baseline that Ma et al. found can score *below* target-only training: the harness shows
when it does. With ``source_share = 0`` (and finetune's lr) it is finetune (or scratch
without pretraining). Defaults lr 8.5e-3 and source share 0.25: the best of the 8-trial
validation study ``joint-k5`` behind ``results/tuned`` (lr 0.008459, rounded).
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, Learner, register
from fewshot_transfer.learners.hparams import HP, LR, SOURCE_SHARE
from fewshot_transfer.training import LearnerContext, Segmenter, labeled_batches, source_rows, train_supervised


@register
class Joint(Learner):
    name = "joint"
    uses_source = True
    hparams = {
        "lr": LR.but(default=0.0085),
        "source_share": SOURCE_SHARE.but(default=0.25, help="share of each step's rows that are labeled CAP rows"),
        "from_pretrained": HP(True, "start from the CAP-pretrained backbone (false: a fresh one)"),
    }
    control = Control(off={"source_share": 0.0})

    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        model = ctx.source_model() if p.from_pretrained else ctx.new_model()
        batches = labeled_batches(
            ctx, ctx.support, p.batch_size, source=ctx.source_train, n_source=source_rows(p.batch_size, p.source_share)
        )
        train_supervised(ctx, model, batches, steps=p.steps, lr=p.lr, phase="target")
        return ctx.segmenter(model)
