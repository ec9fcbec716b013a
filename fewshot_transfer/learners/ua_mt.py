"""``ua-mt``: the uncertainty-aware mean teacher (Yu et al., MICCAI 2019).

The existing mean teacher (``learners/mean_teacher.py``: EMA teacher, weak / strong views,
ramped weight, the same budget and streams) with its consistency term gated by the
teacher's uncertainty:

- the teacher segments ``uncertainty_passes`` (8) copies of the weak view, each with input
  noise ``clamp(N(0, input_noise^2), -2 input_noise, 2 input_noise)`` (``input_noise`` 0.1 =
  150 HU in the lung window, Yu et al.'s 0.1 / 0.2 clamp);
- the uncertainty of a pixel is the entropy of the mean foreground probability over the
  two classes, ``u = -p log p - (1 - p) log(1 - p)`` (nats, at most ln 2);
- only pixels with ``u < (0.75 + 0.25 * r(t)) * ln 2`` enter the consistency, with
  ``r(t) = exp(-5 (1 - t / steps)^2)`` over the whole run (Yu et al.'s threshold ramp);
- ``L_cons = sum(mask * (sigmoid(student(strong)) - sigmoid(teacher(weak)))^2) / sum(mask)``.

With ``unlabeled_weight = 0`` nothing is drawn or run: the run is scratch's, bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import HP
from fewshot_transfer.learners.mean_teacher import MeanTeacher, MeanTeacherHooks, strong_intensity
from fewshot_transfer.learners.semi import sigmoid_rampup, weak_view
from fewshot_transfer.training import LearnerContext, StepBatch, StepHooks


def binary_entropy(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Entropy (nats) of the two-class distribution ``[1 - p, p]``, per pixel."""
    return -(p * torch.log(p + eps) + (1.0 - p) * torch.log(1.0 - p + eps))


class UncertaintyAwareHooks(MeanTeacherHooks):
    """Mean-teacher consistency restricted to pixels where the noisy teacher passes agree."""

    def __init__(self, ctx: LearnerContext, model: nn.Module) -> None:
        super().__init__(ctx, model)
        p = ctx.params
        self.passes = p.uncertainty_passes
        self.noise = p.input_noise
        self.steps = p.steps

    def uncertainty(self, weak: torch.Tensor) -> torch.Tensor:
        """Entropy of the teacher's mean prediction over noisy copies of ``weak``."""
        copies = weak.repeat(self.passes, 1, 1, 1)
        noise = torch.randn(copies.shape, generator=self.gen).mul(self.noise)
        noise = noise.clamp(-2 * self.noise, 2 * self.noise).to(copies)
        prob = torch.sigmoid(self.teacher(copies + noise)).view(self.passes, *weak.shape).mean(0)
        return binary_entropy(prob)

    def terms(self, batch: StepBatch) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
        weak = weak_view(self.ctx, self.rows, self.gen)
        strong = strong_intensity(weak, self.gen)
        with torch.no_grad():
            target = torch.sigmoid(self.teacher(weak))
            limit = (0.75 + 0.25 * sigmoid_rampup(batch.step, self.steps)) * math.log(2.0)
            mask = (self.uncertainty(weak) < limit).to(weak.dtype)
        sq = (torch.sigmoid(self.model(strong)) - target) ** 2
        term = (mask * sq).sum() / (mask.sum() + 1e-8)
        return [("consistency", self.weight * self.ramp(batch.step), term)], {"uamt_certain": float(mask.mean())}


@register
class UncertaintyAwareMeanTeacher(MeanTeacher):
    name = "ua-mt"
    hparams = {
        **MeanTeacher.hparams,
        "uncertainty_passes": HP(8, "noisy teacher passes the uncertainty is measured over", low=1),
        "input_noise": HP(0.1, "std of the teacher's input noise (clamped at twice it)", low=0.0),
    }

    def hooks(self, ctx: LearnerContext, model: nn.Module) -> StepHooks:
        return UncertaintyAwareHooks(ctx, model)
