"""``cps``: cross pseudo supervision — two differently initialised segmentors teach each other.

CPS (Chen et al., CVPR 2021) on the common budget. Segmentor A is the one the shared loop
trains and the one evaluated: it starts from scratch's initialisation and sees scratch's
labeled stream and augmentation, so with ``unlabeled_weight = 0`` (no hook installed) it
*is* scratch, bit for bit. Segmentor B starts from another initialisation (the same
backbone drawn with another seed) and has its own Adam at the same lr. Each of the
``steps`` steps:

- both segment the same weak view of ``unlabeled_batch`` unlabeled rows; each takes the
  other's hard labels (probability >= the run's threshold, no gradient) as its target under
  the shared Dice + BCE;
- A's loss is ``seg(shots) + w(t) * L(A_u, labels of B)`` (the loop's step); B's is
  ``seg(same augmented shots) + w(t) * L(B_u, labels of A)``, stepped in ``after_step``;
- ``w(t) = unlabeled_weight * exp(-5 (1 - t)^2)`` over the first ``ramp_share`` of the steps.

Both networks take ``steps`` optimizer steps on target-side batches (B is a companion: twice
scratch's training FLOPs per step); only A is returned.
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import Uniform
from fewshot_transfer.learners.semi import (
    RAMP_SHARE,
    SEMI_HPARAMS,
    UNLABELED_BATCH,
    SemiSupervisedLearner,
    sigmoid_rampup,
    weak_view,
)
from fewshot_transfer.losses import seg_loss
from fewshot_transfer.training import LearnerContext, StepBatch, StepHooks, unlabeled_batches

#: Seed offset of segmentor B's initialisation (A uses the cell's own, as scratch).
OTHER_INIT = 7001


class CpsHooks(StepHooks):
    """Trains segmentor B beside the loop's A; each learns from the other's hard labels."""

    def __init__(self, ctx: LearnerContext, model: nn.Module) -> None:
        p = ctx.params
        self.ctx = ctx
        self.model = model
        self.other = ctx.new_model(salt=OTHER_INIT).train()
        self.opt = torch.optim.Adam(self.other.parameters(), lr=p.lr, weight_decay=ctx.train.weight_decay)
        self.weight = p.unlabeled_weight
        self.ramp_steps = max(1, round(p.ramp_share * p.steps))
        self.threshold = ctx.train.threshold
        self.rows = unlabeled_batches(ctx, ctx.unlabeled, p.unlabeled_batch, salt=701)
        self.gen = ctx.torch_generator(salt=702)
        self.other_loss: torch.Tensor | None = None

    def _labels(self, logits: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits.detach()) >= self.threshold).to(logits.dtype)

    def terms(self, batch: StepBatch) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
        weak = weak_view(self.ctx, self.rows, self.gen)
        weight = self.weight * sigmoid_rampup(batch.step, self.ramp_steps)
        logits_a, logits_b = self.model(weak), self.other(weak)
        other_seg = seg_loss(self.other(batch.x[: batch.n_labeled]), batch.y)
        self.other_loss = other_seg + weight * seg_loss(logits_b, self._labels(logits_a))
        term = seg_loss(logits_a, self._labels(logits_b))
        agree = float((self._labels(logits_a) == self._labels(logits_b)).float().mean())
        return [("cps", weight, term)], {"cps_other_seg": float(other_seg.detach()), "cps_agree": agree}

    def after_step(self, batch: StepBatch) -> dict[str, float]:
        if self.other_loss is not None:
            self.opt.zero_grad(set_to_none=True)
            self.other_loss.backward()
            self.opt.step()
            self.other_loss = None
        return {}


@register
class CrossPseudoSupervision(SemiSupervisedLearner):
    """Cross pseudo supervision; the evaluated model is segmentor A (scratch's initialisation)."""

    name = "cps"
    hparams = {
        **SEMI_HPARAMS,
        "ramp_share": RAMP_SHARE.but(search=Uniform(0.1, 0.5)),
        "unlabeled_batch": UNLABELED_BATCH,
    }

    def hooks(self, ctx: LearnerContext, model: nn.Module) -> StepHooks:
        return CpsHooks(ctx, model)
