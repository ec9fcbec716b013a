"""The one training loop every learner runs on the target side (Adam on the shared Dice + BCE).

Learners that add something to supervised training (adversarial terms, pseudo-labels, a
consistency loss, a discriminator or teacher update) do it through :class:`StepHooks`,
never with a loop of their own. With every hook weight at 0 and no extra rows the loop is
*exactly* the plain supervised loop, because the labeled stream, the augmentation stream
and the optimizer are the same objects in the same order: the fair-protocol controls
(adversarial with lambda = 0 is finetune or joint, a semi-supervised learner with
unlabeled weight 0 is its supervised counterpart) hold by construction.

One step:

1. ``x, y = next(batches)``: the labeled rows (source rows first, then target shots);
2. ``hooks.extra_rows(step)``: optional unlabeled rows, appended after the labeled ones;
3. one augmentation of the whole batch (one shared geometry draw per row), one forward;
4. ``loss = seg(labeled rows) + sum_i w_i * term_i`` (terms with ``w_i == 0`` are skipped);
5. Adam step on the model; 6. ``hooks.after_step`` (e.g. a discriminator step on the
   detached outputs, an EMA teacher update); 7. ``ctx.report`` of every value.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from fewshot_transfer.losses import seg_loss
from fewshot_transfer.training.context import LearnerContext

Term = tuple[str, float, torch.Tensor]


@dataclass
class StepBatch:
    """One step's augmented rows and forward outputs: ``n_labeled`` labeled rows, then extra rows."""

    step: int
    n_labeled: int
    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    feats: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def labeled_logits(self) -> torch.Tensor:
        return self.logits[: self.n_labeled]

    @property
    def extra_logits(self) -> torch.Tensor:
        return self.logits[self.n_labeled :]

    def detached(self) -> StepBatch:
        """The same batch with outputs cut from the segmentor's graph (for a discriminator step)."""
        return StepBatch(
            self.step,
            self.n_labeled,
            self.x,
            self.y,
            self.logits.detach(),
            {k: v.detach() for k, v in self.feats.items()},
        )


class StepHooks:
    """Extension points of :func:`train_steps`; this base adds nothing (plain supervised training)."""

    #: Ask the backbone for its named features (``model(x, return_features=True)``).
    needs_features: bool = False

    def extra_rows(self, step: int) -> torch.Tensor | None:
        """Unlabeled ``[B, 1, H, W]`` rows to append to this step's batch (augmented with it)."""
        return None

    def terms(self, batch: StepBatch) -> tuple[list[Term], dict[str, float]]:
        """``[(name, weight, term)]`` added to the segmentation loss, plus stats to report."""
        return [], {}

    def after_step(self, batch: StepBatch) -> dict[str, float]:
        """Runs after the segmentor's optimizer step (discriminator step, EMA update); returns stats."""
        return {}


def train_steps(
    ctx: LearnerContext,
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float,
    phase: str,
    hooks: StepHooks | None = None,
) -> nn.Module:
    """Adam on ``seg(labeled rows) + hook terms`` for ``steps`` steps; see the module docstring."""
    hooks = hooks or StepHooks()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=ctx.train.weight_decay)
    gen = ctx.torch_generator(salt=zlib.crc32(phase.encode()) % 10_000)
    model.train()
    t0 = time.perf_counter()
    labeled_rows = extra_rows = 0  # the most rows of either kind one step used (the budget record)
    for step in range(1, steps + 1):
        x, y = next(batches)
        n = x.shape[0]
        extra = hooks.extra_rows(step)
        labeled_rows, extra_rows = max(labeled_rows, n), max(extra_rows, 0 if extra is None else int(extra.shape[0]))
        if extra is not None and extra.shape[0]:
            x = torch.cat([x, extra])
            y = torch.cat([y, torch.zeros_like(extra)])
        x, y = ctx.augment(x, y, gen)
        if hooks.needs_features:
            logits, feats = model(x, return_features=True)
        else:
            logits, feats = model(x), {}
        batch = StepBatch(step, n, x, y[:n], logits, feats)
        seg = seg_loss(batch.labeled_logits, batch.y)
        terms, stats = hooks.terms(batch)
        loss = seg
        for _, weight, term in terms:
            if weight:
                loss = loss + weight * term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stats.update(hooks.after_step(batch))
        values = {"seg": float(seg.detach())}
        if terms:
            values["loss"] = float(loss.detach())
            values.update({name: float(term.detach()) for name, _, term in terms})
        values.update(stats)
        ctx.report(phase, step, values)
    seconds = time.perf_counter() - t0
    ctx.train_seconds += seconds
    ctx.budget[phase] = {
        "steps": steps,
        "optimizer": "adam",
        "lr": lr,
        "labeled_rows": labeled_rows,
        "extra_rows": extra_rows,
        "seconds": seconds,
    }
    return model.eval()


def train_supervised(
    ctx: LearnerContext,
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float,
    phase: str,
) -> nn.Module:
    """Plain supervised training: :func:`train_steps` without hooks."""
    return train_steps(ctx, model, batches, steps=steps, lr=lr, phase=phase)
