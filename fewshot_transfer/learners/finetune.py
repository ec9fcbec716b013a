"""``finetune``: start from the cached CAP-pretrained backbone and fine-tune on the k shots.

A smaller learning rate than training from scratch keeps the source features that
transfer; all layers are updated (with 1-20 shots there is too little data to justify
freezing choices per layer, and the tuner can lower ``lr`` instead).
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Learner, LearnerContext, Segmenter, register, slice_batches, train_supervised


@register
class Finetune(Learner):
    name = "finetune"
    uses_source = True
    defaults = {"lr": 0.001}

    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        model = ctx.source_model()
        batches = slice_batches(ctx, ctx.support, int(p["batch_size"]))
        train_supervised(ctx, model, batches, steps=int(p["steps"]), lr=float(p["lr"]), phase="target")
        return ctx.segmenter(model)
