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


# ------------------------------------------------------------- strong views (semi-supervised)

#: Width of the lung window [-1250, 250] HU that maps the stored images to [0, 1].
WINDOW_HU = 1500.0
#: The window's centre in image units (-500 HU).
WINDOW_CENTRE = 0.5


@dataclass(frozen=True)
class StrongConfig:
    """Strong-view ranges for weak-to-strong consistency, in CT terms (image = lung window / 1500 HU).

    ``contrast`` rescales around the window centre (-500 HU): 0.75-1.25 is a window width of
    1200-2000 HU instead of 1500, the spread of lung windows in use. ``level_hu`` shifts the
    level by up to +-60 HU, about the calibration drift between scanners and below the gap
    between ground glass (about -460 HU) and aerated lung (about -820 HU), so a shifted view
    keeps its label. ``gamma`` 0.7-1.4 bends the grey scale inside the window (a different
    display curve); ``noise_hu`` adds Gaussian noise of up to 30 HU (a low-dose scan);
    ``blur_px`` a Gaussian blur of sigma 0.1-1.5 px (a softer reconstruction kernel). Each
    intensity change is applied with probability ``p``, the blur with ``blur_p``, CutMix with
    ``cutmix_p`` (a box of 2-40 % of the slice, aspect 0.3-3.3, as UniMatch).
    """

    p: float = 0.8
    contrast: tuple[float, float] = (0.75, 1.25)
    level_hu: float = 60.0
    gamma: tuple[float, float] = (0.7, 1.4)
    noise_hu: float = 30.0
    blur_p: float = 0.5
    blur_px: tuple[float, float] = (0.1, 1.5)
    cutmix_p: float = 0.5
    cutmix_area: tuple[float, float] = (0.02, 0.4)
    cutmix_aspect: tuple[float, float] = (0.3, 1 / 0.3)


def _rand(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=gen).mul(hi - lo).add(lo)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with ``sigma`` pixels (reflect padding, 3-sigma kernel)."""
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def strong_ct(x: torch.Tensor, cfg: StrongConfig, gen: torch.Generator) -> torch.Tensor:
    """An intensity-and-blur strong view of ``x`` (``[B, 1, H, W]`` in lung-window units), per row; geometry untouched."""
    b = x.shape[0]
    out = x.clamp(0.0, 1.0)
    on = torch.rand(b, 4, generator=gen) < cfg.p
    contrast = torch.where(on[:, 0], _rand(gen, b, *cfg.contrast), torch.ones(b))
    level = torch.where(on[:, 1], _rand(gen, b, -cfg.level_hu, cfg.level_hu) / WINDOW_HU, torch.zeros(b))
    gamma = torch.where(on[:, 2], _rand(gen, b, *cfg.gamma), torch.ones(b))
    noise = torch.where(on[:, 3], _rand(gen, b, 0.0, cfg.noise_hu) / WINDOW_HU, torch.zeros(b))
    blur = torch.rand(b, generator=gen) < cfg.blur_p
    sigma = _rand(gen, b, *cfg.blur_px)
    eps = torch.randn(x.shape, generator=gen)

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.view(b, 1, 1, 1).to(x)

    out = out.pow(col(gamma))
    out = (out - WINDOW_CENTRE) * col(contrast) + WINDOW_CENTRE + col(level) + eps.to(x) * col(noise)
    rows = [gaussian_blur(out[i : i + 1], float(sigma[i])) if blur[i] else out[i : i + 1] for i in range(b)]
    return torch.cat(rows).clamp(0.0, 1.0)


def cutmix_boxes(shape: torch.Size, cfg: StrongConfig, gen: torch.Generator) -> torch.Tensor:
    """``[B, 1, H, W]`` masks, 1 inside a random box (drawn with probability ``cutmix_p`` per row), else 0."""
    b, _, h, w = shape
    boxes = torch.zeros(b, 1, h, w)
    for i in range(b):
        if float(torch.rand(1, generator=gen)) >= cfg.cutmix_p:
            continue
        area = float(_rand(gen, 1, *cfg.cutmix_area)) * h * w
        aspect = float(_rand(gen, 1, *cfg.cutmix_aspect))
        bh = min(h, max(1, round(math.sqrt(area * aspect))))
        bw = min(w, max(1, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
        boxes[i, :, top : top + bh, left : left + bw] = 1.0
    return boxes
