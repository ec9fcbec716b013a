"""The one segmentor backbone every learner trains: a 2D U-Net.

Design constraints come from the learners that share it:

* meta-learners run it under ``torch.func.functional_call`` / ``grad`` / ``vmap``, so it
  holds no buffers that are updated in place (no BatchNorm by default; GroupNorm or
  InstanceNorm without running statistics);
* feature-level domain adaptation needs named intermediate features, and AdaptSeg needs an
  auxiliary output from a lower decoder level, so ``forward(..., return_features=True)``
  returns both alongside the logits.

The output is a single-channel lesion logit; the binary softmax AdaptSeg expects is
``[1 - sigmoid, sigmoid]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("group", "instance", "batch", "none")


@dataclass(frozen=True)
class UNetConfig:
    """Backbone shape. ``depth`` counts resolution levels (depth-1 poolings)."""

    in_channels: int = 1
    base: int = 16
    depth: int = 4
    norm: str = "group"
    dropout: float = 0.0
    groups: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        g = groups
        while channels % g:
            g //= 2
        return nn.GroupNorm(max(g, 1), channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)  # InstanceNorm with affine, no running stats
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


class ConvBlock(nn.Sequential):
    """Two 3x3 conv -> norm -> ReLU layers (the classic U-Net stage)."""

    def __init__(self, cin: int, cout: int, norm: str, groups: int, dropout: float) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"),
            _norm(norm, cout, groups),
            nn.ReLU(inplace=False),
            nn.Conv2d(cout, cout, 3, padding=1, bias=norm == "none"),
            _norm(norm, cout, groups),
            nn.ReLU(inplace=False),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """2D U-Net returning lesion logits ``[B, 1, H, W]``.

    With ``return_features=True`` it returns ``(logits, features)`` where ``features`` maps
    ``"enc{i}"``, ``"bottleneck"`` and ``"dec{i}"`` to activations and ``"aux_logits"`` to an
    auxiliary prediction from the second-highest decoder level (upsampled to full size).
    ``"dec1"`` is the full-resolution decoder feature map the dual discriminators read.

    ``encoder_transform`` (default None: the plain network) is applied to every encoder output
    (the skips and the bottleneck) before the decoder reads them: the feature-perturbation
    branch of UniMatch (channel dropout on the encoder features) uses it.
    """

    def __init__(self, config: UNetConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        if overrides:
            cfg = UNetConfig(**{**cfg.to_dict(), **overrides})
        if cfg.depth < 3:
            raise ValueError(f"UNet depth must be >= 3 (the auxiliary head reads level 2), got {cfg.depth}")
        if cfg.norm not in NORMS:
            raise ValueError(f"unknown norm {cfg.norm!r}; choose one of {', '.join(NORMS)}")
        self.config = cfg
        widths = [cfg.base * 2**i for i in range(cfg.depth)]
        self.widths = widths
        self.encoders = nn.ModuleList()
        cin = cfg.in_channels
        for w in widths:
            self.encoders.append(ConvBlock(cin, w, cfg.norm, cfg.groups, cfg.dropout if w == widths[-1] else 0.0))
            cin = w
        self.decoders = nn.ModuleList()
        for w_skip, w_in in zip(reversed(widths[:-1]), reversed(widths[1:])):
            self.decoders.append(ConvBlock(w_in + w_skip, w_skip, cfg.norm, cfg.groups, 0.0))
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.aux_head = nn.Conv2d(widths[1], 1, 1)

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channel count of each named feature, for sizing discriminators."""
        out = {f"enc{i + 1}": w for i, w in enumerate(self.widths)}
        out["bottleneck"] = self.widths[-1]
        for level, w in enumerate(reversed(self.widths[:-1])):
            out[f"dec{len(self.widths) - 1 - level}"] = w
        return out

    def forward(
        self,
        x: torch.Tensor,
        return_features: bool = False,
        encoder_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        size = x.shape[-2:]
        skips = []
        h = x
        for i, enc in enumerate(self.encoders):
            if i:
                h = F.max_pool2d(h, 2)
            h = enc(h)
            skips.append(h)
        if encoder_transform is not None:
            skips = [encoder_transform(s) for s in skips]
            h = skips[-1]
        feats: dict[str, torch.Tensor] = {}
        if return_features:
            feats.update({f"enc{i + 1}": s for i, s in enumerate(skips)})
            feats["bottleneck"] = h
        n_dec = len(self.decoders)
        for j, dec in enumerate(self.decoders):
            skip = skips[-2 - j]
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = dec(torch.cat([h, skip], dim=1))
            level = n_dec - j
            if return_features:
                feats[f"dec{level}"] = h
            if level == 2 and return_features:
                feats["aux_logits"] = F.interpolate(self.aux_head(h), size=size, mode="bilinear", align_corners=False)
        logits = self.head(h)
        if return_features:
            return logits, feats
        return logits


def build_unet(model_cfg: dict) -> UNet:
    """A UNet from the ``[model]`` table of a run config (unknown keys are an error)."""
    known = set(UNetConfig.__dataclass_fields__)
    unknown = set(model_cfg) - known
    if unknown:
        raise ValueError(f"unknown [model] keys {sorted(unknown)}; valid keys: {sorted(known)}")
    return UNet(UNetConfig(**model_cfg))
