"""``pseudo-label`` / ``pseudo-label-cap``: self-training on confident predictions for unlabeled target slices.

The budget is the common one: ``steps`` optimizer steps in total, one call of the shared
loop, every step holding the same ``batch_size`` labeled shot rows scratch / finetune draw.
It is split in two parts of that one loop:

1. steps ``1 .. warmup`` (``warmup = round(warmup_share * steps)``): plain supervised
   training on the shots, exactly scratch's (or finetune's) first steps;
2. after step ``warmup`` the model is frozen into a *teacher* (the shots-trained, or at
   ``-cap`` the fine-tuned, model), and every remaining step appends ``unlabeled_batch``
   unlabeled target rows and adds ``unlabeled_weight * L_pl``.

``L_pl`` is the binary cross-entropy against the teacher's hard labels (probability >= the
run's prediction threshold), averaged over the confident pixels (``max(p, 1 - p) >=
confidence``); pixels below it are ignored, and a batch with none contributes 0. It is the
cross-entropy of classic pseudo-labeling (Lee 2013), *not* the shared Dice + BCE: the
teacher's confident lesion pixels are a few cores of the lesions, often none in a batch,
and a soft Dice against such labels rewards predicting no lesion at all: with Dice + BCE
the learner collapsed to an empty prediction at k = 0 and fell below its own control
(finetune) at k >= 1 (``docs/semi_supervised.md``). The teacher
predicts on the very rows the student sees *after* the loop's augmentation, so its labels
are pixel-aligned with the student's output whatever geometry the loop drew; no warping
of labels is needed. A frozen teacher (rather than the student's own predictions) keeps
the target from drifting with the student's errors.

With ``unlabeled_weight = 0`` no unlabeled row is drawn and no term is added: the loop,
the labeled stream and the augmentation stream are scratch's (``pseudo-label``) or
finetune's at the same lr (``pseudo-label-cap``), bit for bit.

At k = 0 (``pseudo-label-cap`` only) there are no shots: the labeled part of each step is
``batch_size`` labeled CAP rows, so the loop keeps a supervised anchor while the teacher
(the source model, further trained on CAP during warm-up) labels the unlabeled COVID-19 rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import HP, Uniform
from fewshot_transfer.learners.semi import (
    CONFIDENCE,
    SEMI_HPARAMS,
    UNLABELED_BATCH,
    SemiSupervisedLearner,
    cap_variant,
    frozen_copy,
)
from fewshot_transfer.training import (
    LearnerContext,
    StepBatch,
    StepHooks,
    unlabeled_batches,
)


def masked_bce(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over the pixels where ``keep`` is 1 (0 when there are none)."""
    n = keep.sum()
    if n == 0:
        return logits.sum() * 0.0
    return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * keep).sum() / n


def masked_seg_loss(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Soft Dice + BCE (the shared objective) over the pixels where ``keep`` is 1 only."""
    if keep.sum() == 0:
        return logits.sum() * 0.0
    bce = masked_bce(logits, target, keep)
    prob = torch.sigmoid(logits) * keep
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + (target * keep).sum() + 1.0)
    return dice + bce


class PseudoLabelHooks(StepHooks):
    """Freezes the teacher after warm-up, then appends unlabeled rows and their pseudo-label term."""

    def __init__(self, ctx: LearnerContext, model: nn.Module, warmup: int) -> None:
        p = ctx.params
        self.model = model
        self.warmup = warmup
        self.weight = p.unlabeled_weight
        self.confidence = p.confidence
        self.threshold = ctx.train.threshold
        self.rows = unlabeled_batches(ctx, ctx.unlabeled, p.unlabeled_batch, salt=401)
        self.teacher: nn.Module | None = frozen_copy(model) if warmup == 0 else None

    def extra_rows(self, step: int) -> torch.Tensor | None:
        return next(self.rows) if step > self.warmup else None

    def terms(self, batch: StepBatch) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
        if batch.step <= self.warmup or self.teacher is None:
            return [], {}
        with torch.no_grad():
            prob = torch.sigmoid(self.teacher(batch.x[batch.n_labeled :]))
        label = (prob >= self.threshold).to(prob.dtype)
        keep = (torch.maximum(prob, 1.0 - prob) >= self.confidence).to(prob.dtype)
        term = masked_bce(batch.extra_logits, label, keep)
        stats = {"pl_confident": float(keep.mean()), "pl_lesion": float(label.mean())}
        return [("pseudo", self.weight, term)], stats

    def after_step(self, batch: StepBatch) -> dict[str, float]:
        if batch.step == self.warmup:
            self.teacher = frozen_copy(self.model)
        return {}


@register
class PseudoLabel(SemiSupervisedLearner):
    name = "pseudo-label"
    hparams = {
        **SEMI_HPARAMS,
        "confidence": CONFIDENCE.but(search=Uniform(0.7, 0.99)),
        "warmup_share": HP(
            0.5,
            "share of the steps trained on the shots alone before the teacher is frozen",
            search=Uniform(0.25, 0.75, step=0.125),
        ),
        "unlabeled_batch": UNLABELED_BATCH,
    }

    def hooks(self, ctx: LearnerContext, model: nn.Module) -> StepHooks:
        return PseudoLabelHooks(ctx, model, round(ctx.params.warmup_share * ctx.params.steps))


PseudoLabelCap = register(
    cap_variant(
        PseudoLabel,
        "Self-training from the CAP-pretrained backbone at finetune's lr; the teacher is the fine-tuned model.",
    )
)
