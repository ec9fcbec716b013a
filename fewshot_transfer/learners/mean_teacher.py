"""``mean-teacher`` / ``mean-teacher-cap``: consistency with an EMA teacher on unlabeled target slices.

Mean teacher (Tarvainen & Valpola 2017) on the common budget: one call of the shared loop,
``steps`` optimizer steps, every step holding the same ``batch_size`` labeled shot rows
scratch / finetune draw, plus ``unlabeled_weight * ramp(step) * L_cons``:

- the teacher is an exponential moving average of the student, updated after every
  optimizer step (``after_step``) with decay ``min(1 - 1 / (step + 1), ema_decay)``, so
  the early teacher follows the student instead of staying at the initialisation;
- ``L_cons = mean((sigmoid(student(strong)) - sigmoid(teacher(weak)))^2)`` over
  ``unlabeled_batch`` unlabeled target rows per step;
- ``ramp`` is the usual sigmoid ramp-up ``exp(-5 (1 - t)^2)`` over the first
  ``ramp_share`` of the steps.

Views. The weak view is the run's own augmentation (flip, affine, intensity jitter) drawn
from this learner's generator; the strong view is the *same* tensor with a stronger
intensity perturbation (gain, offset, noise) on top, so both views share one geometry and
the teacher's map is pixel-aligned with the student's without warping predictions. The
unlabeled rows therefore do not go through the loop's ``extra_rows`` (the loop would
augment them with a geometry this hook cannot see); the hook runs the student on them
itself inside ``terms``, which costs the same forward the appended rows would.

With ``unlabeled_weight = 0`` nothing is drawn or run: the loop is scratch's
(``mean-teacher``) or finetune's at the same lr (``mean-teacher-cap``), bit for bit.
At k = 0 (``mean-teacher-cap`` only) the labeled part of each step is ``batch_size``
labeled CAP rows, and the teacher starts as the source model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import Uniform
from fewshot_transfer.learners.semi import (
    EMA_DECAY,
    RAMP_SHARE,
    SEMI_HPARAMS,
    UNLABELED_BATCH,
    SemiSupervisedLearner,
    cap_variant,
    ema_update,
    frozen_copy,
    sigmoid_rampup,
    weak_view,
    weight_search,
)
from fewshot_transfer.training import (
    LearnerContext,
    StepBatch,
    StepHooks,
    unlabeled_batches,
)

#: Strong view on top of the weak one: gain, offset and noise beyond the run's own jitter.
STRONG_GAIN = 0.2
STRONG_OFFSET = 0.1
STRONG_NOISE = 0.05


def strong_intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``x`` with a per-row random gain and offset and Gaussian noise (geometry untouched)."""
    b = x.shape[0]
    gain = 1.0 + (torch.rand(b, generator=gen) * 2 - 1).mul(STRONG_GAIN).view(b, 1, 1, 1)
    offset = (torch.rand(b, generator=gen) * 2 - 1).mul(STRONG_OFFSET).view(b, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen) * STRONG_NOISE
    return x * gain.to(x) + offset.to(x) + noise.to(x)


class MeanTeacherHooks(StepHooks):
    """Consistency between the student on strong and the EMA teacher on weak views; EMA after each step."""

    def __init__(self, ctx: LearnerContext, model: nn.Module) -> None:
        p = ctx.params
        self.ctx = ctx
        self.model = model
        self.teacher = frozen_copy(model)
        self.weight = p.unlabeled_weight
        self.decay = p.ema_decay
        self.ramp_steps = max(1, round(p.ramp_share * p.steps))
        self.rows = unlabeled_batches(ctx, ctx.unlabeled, p.unlabeled_batch, salt=501)
        self.gen = ctx.torch_generator(salt=502)

    def ramp(self, step: int) -> float:
        return sigmoid_rampup(step, self.ramp_steps)

    def terms(self, batch: StepBatch) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
        weak = weak_view(self.ctx, self.rows, self.gen)
        strong = strong_intensity(weak, self.gen)
        with torch.no_grad():
            target = torch.sigmoid(self.teacher(weak))
        term = F.mse_loss(torch.sigmoid(self.model(strong)), target)
        return [("consistency", self.weight * self.ramp(batch.step), term)], {}

    def after_step(self, batch: StepBatch) -> dict[str, float]:
        ema_update(self.teacher, self.model, min(1.0 - 1.0 / (batch.step + 1), self.decay))
        return {}


@register
class MeanTeacher(SemiSupervisedLearner):
    name = "mean-teacher"
    hparams = {
        **SEMI_HPARAMS,
        "unlabeled_weight": weight_search(30.0),
        "ema_decay": EMA_DECAY.but(search=Uniform(0.9, 0.999)),
        "ramp_share": RAMP_SHARE,
        "unlabeled_batch": UNLABELED_BATCH,
    }

    def hooks(self, ctx: LearnerContext, model: nn.Module) -> StepHooks:
        return MeanTeacherHooks(ctx, model)


MeanTeacherCap = register(
    cap_variant(
        MeanTeacher,
        "Mean teacher from the CAP-pretrained backbone at finetune's lr; the teacher starts as the source model.",
    )
)
