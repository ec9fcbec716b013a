"""A held-out linear probe of domain separability: is alignment measured, not assumed.

Before and after adaptation, feature vectors of the aligned layer are read on source
validation slices and unlabeled target slices (no augmentation). A logistic regression
(torch, full-batch L-BFGS on standardized features) is fit on the positions of half the
slices of each domain and scored on the other half: the balanced accuracy on those
held-out slices is the probe's reading. 0.5 = the domains are linearly indistinguishable
at that layer, 1.0 = perfectly separable. Alignment should lower it; a discriminator that
learns nothing leaves it where it was.

Lesions cover ~1 % of a slice, so positions drawn uniformly read the background only (a
probe near 0.5 then says nothing about lesion features). :func:`class_probe` therefore
reads the domains separately per class, with the positions of each class drawn in
balance: lesion-only, background-only and both classes in equal shares. A class-conditional
shift shows as a high lesion-only and a chance background-only reading.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_positions(features: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """At most ``n`` position vectors ``[n, C]`` drawn uniformly from a feature map ``[B, C, H, W]``."""
    vectors = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    if vectors.shape[0] > n:
        vectors = vectors[torch.randperm(vectors.shape[0], generator=gen)[:n]]
    return vectors


def probe_accuracy(
    src_train: torch.Tensor,
    tgt_train: torch.Tensor,
    src_test: torch.Tensor,
    tgt_test: torch.Tensor,
    *,
    l2: float = 1e-3,
) -> float:
    """Held-out balanced accuracy of a logistic regression separating source (0) from target (1) vectors."""
    x = torch.cat([src_train, tgt_train]).double()
    y = torch.cat([torch.zeros(len(src_train)), torch.ones(len(tgt_train))]).double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    weight = torch.where(y > 0, 0.5 / len(tgt_train), 0.5 / len(src_train))
    opt = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = x @ w + b
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")).sum()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc_s = ((((src_test.double() - mean) / std) @ w + b) < 0).double().mean()
        acc_t = ((((tgt_test.double() - mean) / std) @ w + b) > 0).double().mean()
    return float(0.5 * (acc_s + acc_t))


def domain_probe(
    read: Callable[[torch.Tensor], torch.Tensor],
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    per_domain: int = 2048,
    seed: int = 0,
) -> float:
    """Probe reading for ``read`` (images ``[B, 1, H, W]`` -> the aligned layer ``[B, C, h, w]``):
    fit on the even-indexed slices of each domain, score on the odd-indexed ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        f_s, f_t = read(source), read(target)
    parts = [sample_positions(f[i::2], per_domain, gen) for f in (f_s, f_t) for i in (0, 1)]
    return probe_accuracy(parts[0], parts[2], parts[1], parts[3])


def _class_positions(
    features: torch.Tensor, masks: torch.Tensor, lesion: bool, n: int, gen: torch.Generator
) -> torch.Tensor:
    """At most ``n`` position vectors ``[n, C]`` of one class; ``masks`` ``[B, 1, H, W]`` is
    resized to the feature map (a position is lesion when most of its area is)."""
    m = torch.nn.functional.adaptive_avg_pool2d(masks.float(), features.shape[-2:]) > 0.5
    m = m[:, 0] if lesion else ~m[:, 0]
    vectors = features.permute(0, 2, 3, 1)[m]
    if vectors.shape[0] > n:
        vectors = vectors[torch.randperm(vectors.shape[0], generator=gen)[:n]]
    return vectors


def class_probe(
    read: Callable[[torch.Tensor], torch.Tensor],
    source: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    *,
    per_domain: int = 1024,
    seed: int = 0,
    min_positions: int = 16,
) -> dict[str, float | None]:
    """Domain separability per class: ``{"lesion", "background", "balanced"}`` readings.

    ``source`` and ``target`` are (images, masks) ``[B, 1, H, W]``; fit on the even-indexed
    slices of each domain, scored on the odd-indexed ones. "balanced" draws half its
    positions from each class. A class with fewer than ``min_positions`` positions in a
    half reads None (no lesion at that layer's resolution)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        feats = [read(images) for images, _ in (source, target)]
    masks = [m for _, m in (source, target)]

    def parts(lesion: bool, n: int) -> list[torch.Tensor]:
        return [_class_positions(f[i::2], m[i::2], lesion, n, gen) for f, m in zip(feats, masks) for i in (0, 1)]

    les, bg = parts(True, per_domain), parts(False, per_domain)
    out: dict[str, float | None] = {"lesion": None, "background": probe_accuracy(bg[0], bg[2], bg[1], bg[3])}
    if min(len(v) for v in les) >= min_positions:
        out["lesion"] = probe_accuracy(les[0], les[2], les[1], les[3])
        n = min(min(len(v) for v in les), per_domain // 2)
        bal = [torch.cat([les[i][:n], bg[i][:n]]) for i in range(4)]
        out["balanced"] = probe_accuracy(bal[0], bal[2], bal[1], bal[3])
    else:
        out["balanced"] = None
    return {k: None if v is None else round(float(v), 4) for k, v in out.items()}
