"""``unimatch``: weak-to-strong consistency with two strong views and a feature-perturbation branch.

UniMatch (Yang et al., CVPR 2023) on the common budget: one call of the shared loop,
``steps`` optimizer steps, every step holding the ``batch_size`` labeled shot rows scratch
draws, plus the unlabeled terms of ``unlabeled_batch`` unlabeled target rows:

- a *weak* view (the run's own augmentation, drawn from this learner's generator) is
  predicted by the model itself without gradient; its hard labels (probability >= the
  run's threshold) are kept where ``max(p, 1 - p) >= confidence`` (0.95);
- two *independent strong* views of the same rows (:func:`~fewshot_transfer.augment.strong_ct`:
  window contrast, level shift, gamma, noise and blur in lung-window units, then CutMix
  with the strong view of another row of the batch, whose pseudo-labels are mixed with the
  same box) are trained towards those labels;
- a *feature-perturbation* branch runs the weak view with channel dropout 0.5 on every
  encoder feature the decoder reads (``UNet(..., encoder_transform=...)``) towards the same
  labels.

Unlabeled loss ``unlabeled_weight * (0.5 * mean(L_s1, L_s2) + 0.5 * L_fp)`` (UniMatch's
``0.25 + 0.25 + 0.5`` split), each ``L`` the binary cross-entropy over confident pixels
divided by all pixels (UniMatch's normalisation: few confident pixels give a small loss).
Strong views keep the weak view's geometry, so every label is pixel-aligned.

:class:`WeakToStrongHooks` with one strong view and no feature branch is FixMatch
(``learners/fixmatch.py``). With ``unlabeled_weight = 0`` no hook is installed: the run is
scratch's, bit for bit.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_transfer.augment import StrongConfig, cutmix_boxes, strong_ct
from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import HP, Uniform
from fewshot_transfer.learners.semi import (
    CONFIDENCE,
    SEMI_HPARAMS,
    UNLABELED_BATCH,
    SemiSupervisedLearner,
    weak_view,
    weight_search,
)
from fewshot_transfer.training import LearnerContext, StepBatch, StepHooks, unlabeled_batches


def confident_bce(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """BCE against ``target`` summed over the ``keep`` pixels and divided by *all* pixels (UniMatch)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * keep).sum() / keep.numel()


def channel_dropout(rate: float, gen: torch.Generator):
    """A feature transform dropping whole channels with probability ``rate`` (seeded, rescaled by ``1 / (1 - rate)``)."""

    def drop(features: torch.Tensor) -> torch.Tensor:
        b, c = features.shape[:2]
        kept = (torch.rand(b, c, 1, 1, generator=gen) >= rate).to(features)
        return features * kept / (1.0 - rate)

    return drop


class WeakToStrongHooks(StepHooks):
    """Pseudo-labels from the weak view, trained on ``n_strong`` strong views (and a feature branch)."""

    def __init__(self, ctx: LearnerContext, model: nn.Module, n_strong: int, feature_dropout: float) -> None:
        p = ctx.params
        self.ctx = ctx
        self.model = model
        self.n_strong = n_strong
        self.feature_dropout = feature_dropout
        self.weight = p.unlabeled_weight
        self.confidence = p.confidence
        self.threshold = ctx.train.threshold
        self.strong = StrongConfig()
        self.rows = unlabeled_batches(ctx, ctx.unlabeled, p.unlabeled_batch, salt=601)
        self.gen = ctx.torch_generator(salt=602)

    def _strong_term(self, weak: torch.Tensor, label: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """One strong view with CutMix: rows take a box from the next row's strong view, labels alike."""
        view = strong_ct(weak, self.strong, self.gen)
        box = cutmix_boxes(weak.shape, self.strong, self.gen).to(weak)

        def mix(t: torch.Tensor) -> torch.Tensor:
            return t * (1.0 - box) + torch.roll(t, 1, dims=0) * box

        return confident_bce(self.model(mix(view)), mix(label), mix(keep))

    def terms(self, batch: StepBatch) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
        weak = weak_view(self.ctx, self.rows, self.gen)
        with torch.no_grad():
            prob = torch.sigmoid(self.model(weak))
        label = (prob >= self.threshold).to(prob.dtype)
        keep = (torch.maximum(prob, 1.0 - prob) >= self.confidence).to(prob.dtype)
        strong = torch.stack([self._strong_term(weak, label, keep) for _ in range(self.n_strong)]).mean()
        stats = {"pl_confident": float(keep.mean()), "pl_lesion": float(label.mean())}
        if not self.feature_dropout:
            return [("strong", self.weight, strong)], stats
        perturbed = self.model(weak, encoder_transform=channel_dropout(self.feature_dropout, self.gen))
        feature = confident_bce(perturbed, label, keep)
        return [("strong", 0.5 * self.weight, strong), ("feature", 0.5 * self.weight, feature)], stats


@register
class UniMatch(SemiSupervisedLearner):
    name = "unimatch"
    #: Two strong views and the feature branch; FixMatch sets 1 and 0.
    n_strong: ClassVar[int] = 2
    hparams = {
        **SEMI_HPARAMS,
        "unlabeled_weight": weight_search(10.0),
        "confidence": CONFIDENCE.but(default=0.95, search=Uniform(0.8, 0.99)),
        "feature_dropout": HP(0.5, "channel dropout rate of the feature-perturbation branch", low=0.0, high=0.95),
        "unlabeled_batch": UNLABELED_BATCH,
    }

    def hooks(self, ctx: LearnerContext, model: nn.Module) -> StepHooks:
        return WeakToStrongHooks(ctx, model, self.n_strong, ctx.params.get("feature_dropout", 0.0))
