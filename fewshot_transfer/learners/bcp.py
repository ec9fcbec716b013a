"""``bcp``: bidirectional copy-paste (Bai et al., CVPR 2023) on the common budget.

One call of the shared loop, ``steps`` optimizer steps, every step holding the
``batch_size`` labeled shot rows scratch draws (their plain Dice + BCE stays in every step:
it is the loop's anchor and what makes ``unlabeled_weight = 0`` scratch, bit for bit). The
budget is split in two stages of that one loop:

1. steps ``1 .. pre`` (``pre = round(pretrain_share * steps)``, default 0.25, BCP's 10k of
   40k iterations on ACDC): copy-paste pre-training on labeled slices. The shot rows are
   halved into ``a`` and ``b``; one mask ``M`` per batch is all ones with a zero rectangle of
   ``mask_ratio`` (2/3) H x 2/3 W at a random place; the input ``a * M + b * (1 - M)`` is
   trained on labels mixed the same way (term ``copy_paste``, weight 1);
2. after step ``pre`` an EMA teacher (decay ``ema_decay`` 0.99) starts as a copy of the
   model. Each step draws ``batch_size`` unlabeled rows (halves ``u_a``, ``u_b``) under the
   run's augmentation; the teacher's hard labels, reduced to their largest connected
   component (``scipy.ndimage.label``, BCP's post-processing), are the pseudo-labels. Under
   one fresh ``M`` the model sees ``u_a * M + a * (1 - M)`` (unlabeled outside the box) and
   ``b * M + u_b * (1 - M)`` (unlabeled inside), and term ``bcp`` (weight
   ``unlabeled_weight``) is BCP's mixed loss: Dice + BCE per region, pseudo-labeled regions
   weighted ``pseudo_weight`` (0.5), labeled ones 1, averaged over the two inputs.

BCP's labels come from a multi-class argmax; here the binary lesion mask at the run's
threshold. The largest-component filter suits one organ per image and drops all but the
largest of several lesion foci (COVID-19 lesions are often multifocal): it is kept because
it is BCP's recipe.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import HP, Uniform
from fewshot_transfer.learners.pseudo_label import masked_seg_loss
from fewshot_transfer.learners.semi import (
    EMA_DECAY,
    SEMI_HPARAMS,
    SemiSupervisedLearner,
    ema_update,
    frozen_copy,
    weak_view,
)
from fewshot_transfer.training import LearnerContext, StepBatch, StepHooks, unlabeled_batches


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` binary masks reduced to their largest 8-connected component each (empty stays empty)."""
    out = np.zeros(mask.shape, dtype=np.float32)
    for i, m in enumerate(mask.detach().cpu().numpy()[:, 0] > 0.5):
        labels, n = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            out[i, 0] = labels == 1 + int(np.argmax(sizes))
    return torch.from_numpy(out).to(mask)


def box_mask(shape: torch.Size, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """``[1, 1, H, W]``: ones with a zero rectangle of ``ratio`` H x ``ratio`` W at a random place (BCP's M)."""
    _, _, h, w = shape
    bh, bw = int(h * ratio), int(w * ratio)
    top = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
    m = torch.ones(1, 1, h, w)
    m[..., top : top + bh, left : left + bw] = 0.0
    return m


def region_loss(logits: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """BCP's mixed loss: ``sum(weight * (Dice + BCE over region))`` over ``(target, region, weight)`` parts."""
    return sum(weight * masked_seg_loss(logits, target, region) for target, region, weight in parts)


class BcpHooks(StepHooks):
    """Copy-paste pre-training, then bidirectional copy-paste with an EMA teacher's pseudo-labels."""

    def __init__(self, ctx: LearnerContext, model: nn.Module) -> None:
        p = ctx.params
        if p.batch_size < 2:
            raise ValueError(f"bcp pairs shot rows: batch_size must be >= 2, got {p.batch_size} (train.batch_size)")
        self.ctx = ctx
        self.model = model
        self.half = p.batch_size // 2
        self.pre = round(p.pretrain_share * p.steps)
        self.weight = p.unlabeled_weight
        self.pseudo_weight = p.pseudo_weight
        self.ratio = p.mask_ratio
        self.decay = p.ema_decay
        self.threshold = ctx.train.threshold
        self.rows = unlabeled_batches(ctx, ctx.unlabeled, 2 * self.half, salt=801)
        self.gen = ctx.torch_generator(salt=802)
        self.teacher: nn.Module | None = frozen_copy(model) if self.pre == 0 else None

    def terms(self, batch: StepBatch) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
        h = self.half
        x, y = batch.x[: batch.n_labeled], batch.y
        a, b, ya, yb = x[:h], x[h : 2 * h], y[:h], y[h : 2 * h]
        m = box_mask(x.shape, self.ratio, self.gen).to(x).expand_as(a)
        if batch.step <= self.pre or self.teacher is None:
            logits = self.model(a * m + b * (1 - m))
            return [("copy_paste", 1.0, 0.5 * region_loss(logits, [(ya, m, 1.0), (yb, 1 - m, 1.0)]))], {}
        u = weak_view(self.ctx, self.rows, self.gen)
        with torch.no_grad():
            pseudo = largest_component((torch.sigmoid(self.teacher(u)) >= self.threshold).to(u.dtype))
        ua, ub, pa, pb = u[:h], u[h:], pseudo[:h], pseudo[h:]
        logits = self.model(torch.cat([ua * m + a * (1 - m), b * m + ub * (1 - m)]))
        w = self.pseudo_weight
        unl = region_loss(logits[:h], [(pa, m, w), (ya, 1 - m, 1.0)])
        lab = region_loss(logits[h:], [(yb, m, 1.0), (pb, 1 - m, w)])
        return [("bcp", self.weight, 0.5 * (unl + lab))], {"pl_lesion": float(pseudo.mean())}

    def after_step(self, batch: StepBatch) -> dict[str, float]:
        if batch.step == self.pre:
            self.teacher = frozen_copy(self.model)
        elif self.teacher is not None:
            ema_update(self.teacher, self.model, self.decay)
        return {}


@register
class BidirectionalCopyPaste(SemiSupervisedLearner):
    name = "bcp"
    #: No unlabeled_batch: the unlabeled rows pair with the shot rows, batch_size of them.
    hparams = {
        **SEMI_HPARAMS,
        "pretrain_share": HP(
            0.25, "share of the steps spent on copy-paste pre-training", search=Uniform(0.1, 0.5, step=0.05)
        ),
        "pseudo_weight": HP(0.5, "weight of the pseudo-labeled regions in the mixed loss", low=0.0),
        "mask_ratio": HP(
            2 / 3, "side of the pasted box, as a share of the slice's height and width", low=0.0, high=1.0
        ),
        "ema_decay": EMA_DECAY,
    }

    def hooks(self, ctx: LearnerContext, model: nn.Module) -> StepHooks:
        return BcpHooks(ctx, model)
