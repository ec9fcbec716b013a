"""A trained model wrapped for inference on normalized numpy slices (what ``fit`` returns)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Segmenter:
    """Batched inference with a fixed threshold; the harness evaluates every learner through it."""

    def __init__(self, model: nn.Module, device: torch.device, threshold: float = 0.5, batch: int = 64) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.threshold = threshold
        self.batch = batch

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Lesion probabilities ``[N, H, W]`` (float32) for images ``[N, H, W]`` in [0, 1]."""
        self.model.eval()
        out = np.empty(images.shape, dtype=np.float32)
        for start in range(0, len(images), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch]))
            x = x.to(self.device, torch.float32).unsqueeze(1)
            out[start : start + len(x)] = torch.sigmoid(self.model(x))[:, 0].float().cpu().numpy()
        return out

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Binary lesion masks (uint8) at the segmenter's threshold."""
        return (self.predict_proba(images) >= self.threshold).astype(np.uint8)


def resample_proba(proba: np.ndarray, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Probability maps at other sizes: each ``[H, W]`` map of ``proba`` ``[N, H, W]`` resampled
    bilinearly (``align_corners=False``, pixel centres aligned, as the loader resized the image)
    to ``shapes[i]``; a map already at its shape is returned as it is."""
    import torch.nn.functional as F

    if len(shapes) != len(proba):
        raise ValueError(f"{len(shapes)} target shapes for {len(proba)} probability maps")
    out: list[np.ndarray] = []
    for p, shape in zip(proba, shapes):
        shape = (int(shape[0]), int(shape[1]))
        if p.shape != shape:
            t = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))[None, None]
            p = F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        out.append(p)
    return out


def resample_to(proba: np.ndarray, shapes: list[tuple[int, int]], threshold: float) -> list[np.ndarray]:
    """Binary masks at other sizes: :func:`resample_proba`, then thresholded. A map already at its
    shape is only thresholded, so a model-size slice gets exactly ``Segmenter.predict``'s mask."""
    return [(p >= threshold).astype(np.uint8) for p in resample_proba(proba, shapes)]
