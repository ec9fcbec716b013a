"""On-the-fly augmentation for CT slices, in torch, applied per batch on the training device.

Why these three: axial slices have a left/right ambiguity worth flipping (lesions occur
in both lungs), small rotations/scales/shifts mimic patient positioning, and intensity
jitter (gain, offset, noise) mimics scanner and reconstruction differences. Vertical
flips are off by default: anterior/posterior anatomy (spine, dependent opacities) is not
symmetric, and COVID lesions are posterior-predominant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.1
    shift: float = 0.05
    gain: float = 0.1
    offset: float = 0.05
    noise: float = 0.02
    enabled: bool = True


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transform ``images`` and ``masks`` (both ``[B, 1, H, W]``) with one shared geometry.

    Masks are resampled with nearest-neighbour so they stay binary. ``generator`` makes the
    draw reproducible from the learner's seed.
    """
    if not cfg.enabled:
        return images, masks
    b = images.shape[0]
    dev = images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=generator).mul(hi - lo).add(lo).to(dev)

    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
    scale = 1.0 + uniform(-cfg.scale, cfg.scale)
    flip = torch.where(torch.rand(b, generator=generator).to(dev) < cfg.hflip, -1.0, 1.0)
    tx, ty = uniform(-cfg.shift, cfg.shift) * 2, uniform(-cfg.shift, cfg.shift) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1).to(
        images.dtype
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    gain = (1.0 + uniform(-cfg.gain, cfg.gain)).view(b, 1, 1, 1).to(images.dtype)
    offset = uniform(-cfg.offset, cfg.offset).view(b, 1, 1, 1).to(images.dtype)
    noise = torch.randn(images.shape, generator=generator).to(dev, images.dtype) * cfg.noise
    return images * gain + offset + noise, masks
