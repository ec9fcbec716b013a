"""``joint``: train one backbone on CAP and the oversampled k shots together.

Every batch holds ``target_share`` target rows (the k shots, drawn with replacement) and
source rows for the rest. This is the naive multi-domain baseline that Ma et al. found can
score *below* target-only training: the harness shows when it does.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Learner, register
from fewshot_transfer.training import LearnerContext, Segmenter, mixed_batches, train_supervised


@register
class Joint(Learner):
    name = "joint"
    uses_source = True
    defaults = {"target_share": 0.5, "from_pretrained": True}

    @staticmethod
    def search_space(trial) -> dict:
        return {
            "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
            "steps": trial.suggest_int("steps", 50, 300, step=25),
            "target_share": trial.suggest_float("target_share", 0.125, 0.875, step=0.125),
        }

    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        model = ctx.source_model() if p.from_pretrained else ctx.new_model()
        batches = mixed_batches(ctx, ctx.source_train, ctx.support, p.batch_size, p.target_share)
        train_supervised(ctx, model, batches, steps=p.steps, lr=p.lr, phase="joint")
        return ctx.segmenter(model)
