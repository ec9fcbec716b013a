"""The seeded minibatch streams every learner draws from (one implementation, all learners).

Each stream owns a numpy generator seeded from (cell seed, salt), so two learners that ask
for the same stream with the same salt see the same rows in the same order: that is what
makes a method with its extra term switched off reproduce its baseline exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from fewshot_transfer.data.slices import SliceSet
from fewshot_transfer.training.context import LearnerContext


def slice_batches(
    ctx: LearnerContext, data: SliceSet, batch_size: int, salt: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Infinite seeded minibatches of labeled rows of ``data`` (with replacement when small)."""
    rows = np.flatnonzero(data.labeled)
    if rows.size == 0:
        raise ValueError(f"{data.name}: no labeled slices to train on")
    rng = np.random.default_rng([ctx.seed, salt, 17])
    while True:
        if rows.size >= batch_size:
            idx = rng.choice(rows, size=batch_size, replace=False)
        else:
            idx = rng.choice(rows, size=batch_size, replace=True)
        yield ctx.to_tensors(data, np.sort(idx))


def mixed_batches(
    ctx: LearnerContext, a: SliceSet, b: SliceSet, batch_size: int, b_share: float, salt: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches with ``round(b_share * batch_size)`` rows from ``b`` (oversampled) and the rest from ``a``."""
    nb = min(batch_size, max(1, round(b_share * batch_size)))
    it_a = slice_batches(ctx, a, batch_size - nb, salt) if nb < batch_size else None
    it_b = slice_batches(ctx, b, nb, salt + 1)
    while True:
        xb, yb = next(it_b)
        if it_a is None:
            yield xb, yb
            continue
        xa, ya = next(it_a)
        yield torch.cat([xa, xb]), torch.cat([ya, yb])


def unlabeled_batches(ctx: LearnerContext, data: SliceSet, batch_size: int, salt: int = 0) -> Iterator[torch.Tensor]:
    """Infinite seeded minibatches ``[B, 1, H, W]`` of *all* rows of ``data`` (labels never read)."""
    n = len(data)
    if n == 0:
        raise ValueError(f"{data.name}: no unlabeled slices")
    rng = np.random.default_rng([ctx.seed, salt, 23])
    while True:
        idx = np.sort(rng.choice(n, size=batch_size, replace=n < batch_size))
        yield torch.from_numpy(data.images[idx]).unsqueeze(1).to(ctx.device, torch.float32)
