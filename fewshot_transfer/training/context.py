"""What a learner sees for one (learner, k, seed) cell: its data, hyperparameters and helpers.

The context hands a learner only the pools it declared (``uses_source``,
``uses_unlabeled``): reading an undeclared pool raises, so a learner's flags are a
checked contract rather than documentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fewshot_transfer.augment import AugmentConfig, augment_batch
from fewshot_transfer.data.slices import SliceSet
from fewshot_transfer.models.unet import UNet, build_unet
from fewshot_transfer.plan import TrainPlan
from fewshot_transfer.training.model_cache import ModelCache
from fewshot_transfer.training.params import Params
from fewshot_transfer.training.segmenter import Segmenter

ProgressCallback = Callable[[int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """A loss became NaN/Inf; the harness records the cell as failed and moves on."""


class PoolWithheld(AttributeError):
    """A learner read a data pool it did not declare (``uses_source`` / ``uses_unlabeled``)."""


class LossCurves:
    """Loss values per step, per phase, kept for the cell's CSV and plots."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float | str]] = []

    def add(self, phase: str, step: int, values: dict[str, float]) -> None:
        self.rows.append({"phase": phase, "step": step, **values})

    def columns(self) -> list[str]:
        cols: list[str] = ["phase", "step"]
        for row in self.rows:
            cols.extend(k for k in row if k not in cols)
        return cols


@dataclass
class LearnerContext:
    """Everything a learner may use for one cell; undeclared pools are withheld (``None``)."""

    learner: str
    _source_train: SliceSet | None
    _source_val: SliceSet | None
    support: SliceSet
    _unlabeled: SliceSet | None
    k: int
    seed: int
    #: The run's ``[train]`` schedule and ``[model]`` table, from its plan (``fewshot_transfer/plan.py``).
    train: TrainPlan
    model: dict
    params: Params
    device: torch.device
    cache: ModelCache
    callback: ProgressCallback | None = None
    #: Trains (or loads) the source-pretrained backbone for this context; the harness passes
    #: ``training.pretrain.pretrained_source_model`` (injected: pretraining runs through the
    #: loops and streams that build on this module, so importing it here would be a circle).
    pretrainer: Callable[[LearnerContext], UNet] | None = None
    curves: LossCurves = field(default_factory=LossCurves)
    train_seconds: float = 0.0
    #: What each ``train_steps`` phase spent (steps, optimizer, lr, rows per step, seconds),
    #: keyed by phase; the harness stores it with the cell so budgets can be compared.
    budget: dict[str, dict] = field(default_factory=dict)
    #: Learner-specific facts for the cell record (e.g. ``summary["adversarial"]``: D accuracy, probe).
    summary: dict = field(default_factory=dict)
    _report_every: int = 10

    def _pool(self, value: SliceSet | None, pool: str, flag: str) -> SliceSet:
        if value is None:
            raise PoolWithheld(f"learner {self.learner!r} reads the {pool} but does not declare {flag} = True")
        return value

    @property
    def source_train(self) -> SliceSet:
        """Labeled source training slices (learners with ``uses_source``)."""
        return self._pool(self._source_train, "source training pool", "uses_source")

    @property
    def source_val(self) -> SliceSet:
        """Source validation slices (learners with ``uses_source``)."""
        return self._pool(self._source_val, "source validation pool", "uses_source")

    @property
    def unlabeled(self) -> SliceSet:
        """Unlabeled target slices, labels stripped (learners with ``uses_unlabeled``)."""
        return self._pool(self._unlabeled, "unlabeled target pool", "uses_unlabeled")

    def torch_generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from the cell seed (augmentation, sampling)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def new_model(self, salt: int = 0) -> UNet:
        """A freshly initialized backbone; the same seed gives the same weights on CPU."""
        torch.manual_seed(self.seed * 7919 + salt)
        return build_unet(self.model).to(self.device)

    def source_model(self) -> UNet:
        """The source-pretrained backbone for this seed (trained once, cached on disk)."""
        if self.pretrainer is None:
            raise RuntimeError(
                f"this context of learner {self.learner!r} was built without a pretrainer; pass "
                "pretrainer=fewshot_transfer.training.pretrained_source_model to LearnerContext"
            )
        return self.pretrainer(self)

    def to_tensors(self, data: SliceSet, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` as ``[B, 1, H, W]`` float tensors on the device."""
        x = torch.from_numpy(data.images[idx]).unsqueeze(1).to(self.device, torch.float32)
        y = torch.from_numpy(data.masks[idx]).unsqueeze(1).to(self.device, torch.float32)
        return x, y

    def augment(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = AugmentConfig(enabled=self.train.augment)
        return augment_batch(x, y, cfg, gen)

    def report(self, phase: str, step: int, losses: dict[str, float]) -> None:
        """Record losses, fail fast on NaN/Inf, and forward progress to the callback."""
        for name, value in losses.items():
            if not math.isfinite(value):
                raise TrainingDiverged(f"{phase}: loss {name!r} became {value} at step {step}")
        if step % self._report_every == 0:
            self.curves.add(phase, step, losses)
        if self.callback is not None:
            self.callback(step, {"phase": phase, **losses})  # type: ignore[dict-item]

    def segmenter(self, model: nn.Module) -> Segmenter:
        return Segmenter(model, self.device, self.train.threshold, self.train.eval_batch)
