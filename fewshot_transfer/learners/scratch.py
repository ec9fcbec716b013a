"""``scratch``: the lower bound — train a fresh backbone on the k target shots only.

Default lr 6e-3: the best of the 8-trial validation study ``scratch-k5`` behind
``results/tuned`` (0.006075, rounded; docs/protocol.md "Where the defaults come from").
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Learner, register
from fewshot_transfer.learners.hparams import LR
from fewshot_transfer.training import LearnerContext, Segmenter, slice_batches, train_supervised


@register
class Scratch(Learner):
    name = "scratch"
    uses_source = False
    hparams = {"lr": LR.but(default=0.006)}

    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        model = ctx.new_model()
        batches = slice_batches(ctx, ctx.support, p.batch_size)
        train_supervised(ctx, model, batches, steps=p.steps, lr=p.lr, phase="target")
        return ctx.segmenter(model)
