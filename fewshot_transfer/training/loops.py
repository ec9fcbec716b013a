"""The supervised training loop every learner shares (Adam on the shared Dice + BCE loss)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator

import torch
from torch import nn

from fewshot_transfer.losses import seg_loss
from fewshot_transfer.training.context import LearnerContext


def train_supervised(
    ctx: LearnerContext,
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float,
    phase: str,
) -> nn.Module:
    """Adam on the shared segmentation loss over ``batches`` (augmented here), for ``steps``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=float(ctx.train_cfg.get("weight_decay", 0.0)))
    gen = ctx.torch_generator(salt=zlib.crc32(phase.encode()) % 10_000)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = next(batches)
        x, y = ctx.augment(x, y, gen)
        loss = seg_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.report(phase, step, {"seg": float(loss.detach())})
    ctx.train_seconds += time.perf_counter() - t0
    return model.eval()
