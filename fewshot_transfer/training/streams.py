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


def labeled_batches(
    ctx: LearnerContext,
    support: SliceSet,
    batch_size: int,
    *,
    source: SliceSet | None = None,
    n_source: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The common target budget: ``batch_size`` shot rows per step (the stream finetune uses),
    preceded by ``n_source`` labeled source rows when a learner mixes in CAP data.

    With ``n_source = 0`` this *is* ``slice_batches(ctx, support, batch_size)``, so a learner
    with its source rows switched off sees exactly finetune's batches. At k = 0 (no shots)
    the batch holds only the source rows.
    """
    src = slice_batches(ctx, source, n_source, salt=1) if (n_source and source is not None) else None
    tgt = slice_batches(ctx, support, batch_size) if len(support) else None
    if src is None and tgt is None:
        raise ValueError("labeled_batches: no target shots and no source rows to train on")
    while True:
        if src is None:
            yield next(tgt)  # type: ignore[arg-type]
        elif tgt is None:
            yield next(src)
        else:
            xs, ys = next(src)
            xt, yt = next(tgt)
            yield torch.cat([xs, xt]), torch.cat([ys, yt])


def source_rows(batch_size: int, source_share: float) -> int:
    """Source rows next to ``batch_size`` target rows so that they make ``source_share`` of the batch."""
    if not 0.0 <= source_share < 1.0:
        raise ValueError(f"source_share must be in [0, 1), got {source_share}")
    return round(batch_size * source_share / (1.0 - source_share))


def unlabeled_batches(ctx: LearnerContext, data: SliceSet, batch_size: int, salt: int = 0) -> Iterator[torch.Tensor]:
    """Infinite seeded minibatches ``[B, 1, H, W]`` of *all* rows of ``data`` (labels never read)."""
    n = len(data)
    if n == 0:
        raise ValueError(f"{data.name}: no unlabeled slices")
    rng = np.random.default_rng([ctx.seed, salt, 23])
    while True:
        idx = np.sort(rng.choice(n, size=batch_size, replace=n < batch_size))
        yield torch.from_numpy(data.images[idx]).unsqueeze(1).to(ctx.device, torch.float32)
