"""The one segmentation loss every learner uses: soft Dice + BCE on lesion logits.

Lesions cover ~1-10% of a slice. Plain BCE is dominated by background and happily
predicts nothing; soft Dice is insensitive to the background count but noisy on tiny
batches. Their sum (the nnU-Net default) trains stably at both extremes. The Dice term
is computed over the whole batch (not averaged per image), so lesion-free slices in a
batch contribute false positives without producing an undefined 0/0 term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over all pixels of the batch."""
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    denom = prob.sum() + target.sum()
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0) -> torch.Tensor:
    """Soft Dice + BCE, the shared segmentation objective (``target`` in {0, 1}, same shape)."""
    target = target.to(logits.dtype)
    return soft_dice_loss(logits, target) + bce_weight * F.binary_cross_entropy_with_logits(logits, target)
