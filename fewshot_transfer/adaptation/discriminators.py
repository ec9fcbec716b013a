"""Domain discriminators for adversarial domain adaptation (small, backbone-sized).

Two shapes, one per level at which domains are aligned:

* :class:`PixelDiscriminator` -- feature level. A small fully-convolutional net over a
  feature map ``[B, C, H, W]`` -> one logit per position ``[B, 1, H, W]``. With ``kernel =
  3`` (default of the learners) each logit sees a 3x3 neighbourhood per layer (a 7x7 field
  with three layers): the domain of a ground-glass patch is a texture, which a per-pixel
  MLP cannot see. ``kernel = 1`` is the per-pixel MLP, which also accepts gathered pixel
  vectors ``[N, C]``. The dual-discriminator loss reads its logits only at the pixels of
  its region (lesion or background).
* :class:`OutputDiscriminator` -- output space. The AdaptSegNet fully-convolutional
  discriminator (Tsai et al. 2018): 4x4 convolutions with stride 2 and LeakyReLU(0.2),
  widths ``ndf, 2ndf, 4ndf, 8ndf`` and a 4x4 stride-2 classifier to one logit map. The
  reference uses ``ndf = 64`` on a ResNet-101 / DeepLab segmentor; here ``ndf`` defaults to
  the U-Net's base width (16 in the quick profile), so the adversary stays a small fraction
  of the segmentor's cost (see :meth:`OutputDiscriminator.for_backbone`).

Logit convention everywhere: source = 0, target = 1 (the brief's AdaptSeg convention).
"""

from __future__ import annotations

import torch
from torch import nn

#: Domain labels of the BCE targets (AdaptSegNet convention).
SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    """Freeze / unfreeze a discriminator (TLlib-style) so segmentor steps do not build its grads."""
    for p in module.parameters():
        p.requires_grad_(flag)


class PixelDiscriminator(nn.Module):
    """Position-wise domain classifier: ``n_layers`` ``kernel x kernel`` convs (LeakyReLU 0.2 between them).

    Args:
        in_channels: feature channels (``model.feature_channels[layer]``).
        hidden: hidden width; default ``2 * in_channels`` (at least 8), i.e. scaled to the backbone.
        n_layers: number of conv layers including the output layer (>= 2).
        kernel: 1 (per-pixel MLP) or an odd size (spatial context, "same" padding).
    """

    def __init__(self, in_channels: int, hidden: int | None = None, n_layers: int = 3, kernel: int = 1) -> None:
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"PixelDiscriminator needs n_layers >= 2, got {n_layers}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"PixelDiscriminator kernel must be odd and >= 1, got {kernel}")
        hidden = hidden or max(8, 2 * in_channels)
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(n_layers - 1):
            layers += [nn.Conv2d(cin, hidden, kernel, padding=kernel // 2), nn.LeakyReLU(0.2)]
            cin = hidden
        layers.append(nn.Conv2d(cin, 1, kernel, padding=kernel // 2))
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.kernel = kernel

    @classmethod
    def for_backbone(cls, model: nn.Module, feature: str = "dec1", **kwargs) -> PixelDiscriminator:
        return cls(int(model.feature_channels[feature]), **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # [N, C] pixel vectors -> [N] logits
            if self.kernel != 1:
                raise ValueError("a PixelDiscriminator with spatial context needs feature maps, not pixel vectors")
            if x.shape[0] == 0:
                return x.new_zeros(0)
            return self.net(x[:, :, None, None])[:, 0, 0, 0]
        if x.ndim != 4:
            raise ValueError(f"PixelDiscriminator expects [B, C, H, W] or [N, C], got {tuple(x.shape)}")
        return self.net(x)


class OutputDiscriminator(nn.Module):
    """AdaptSegNet's fully-convolutional discriminator over segmentation output maps.

    ``n_down`` 4x4/stride-2 conv + LeakyReLU(0.2) stages with widths ``ndf * 2**i``, then a
    4x4/stride-2 classifier conv to one channel (AdaptSegNet: ``n_down = 4``). Each stride
    halves the map, so the input must be at least ``2**(n_down + 1)`` pixels on a side; a
    64x64 map gives a 2x2 logit map, a 32x32 map one logit.
    """

    def __init__(self, in_channels: int = 2, ndf: int = 16, n_down: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(n_down):
            cout = ndf * 2**i
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.Conv2d(cin, 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        self.min_size = 2 ** (n_down + 1)

    @classmethod
    def for_backbone(cls, model: nn.Module, in_channels: int = 2, n_down: int = 4) -> OutputDiscriminator:
        """Widths scaled to the U-Net: ``ndf`` = the backbone's base width."""
        return cls(in_channels=in_channels, ndf=int(model.config.base), n_down=n_down)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"OutputDiscriminator with {len(self.net) // 2} stride-2 stages needs maps of at least "
                f"{self.min_size}x{self.min_size}, got {tuple(x.shape[-2:])}"
            )
        return self.net(x)
