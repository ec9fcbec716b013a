"""A held-out linear probe of domain separability: is alignment measured, not assumed.

Before and after adaptation, feature vectors of the aligned layer are read on source
validation slices and unlabeled target slices (no augmentation). A logistic regression
(torch, full-batch L-BFGS on standardized features) is fit on the positions of half the
slices of each domain and scored on the other half: the balanced accuracy on those
held-out slices is the probe's reading. 0.5 = the domains are linearly indistinguishable
at that layer, 1.0 = perfectly separable. Alignment should lower it; a discriminator that
learns nothing leaves it where it was.
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
