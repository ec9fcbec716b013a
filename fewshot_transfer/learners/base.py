"""The learner protocol: ``fit(context) -> Segmenter``, plus the pieces every learner shares.

A learner sees a :class:`LearnerContext` (source train/val slices, the k-shot target
support set, the unlabeled target pool, its hyperparameters, a seeded model factory, the
on-disk model cache and a progress callback) and returns a :class:`Segmenter`. Learners
register by name with :func:`register`; a new learner is one new module in
``fewshot_transfer/learners/`` (they are discovered automatically).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from fewshot_transfer.atomic import atomic_open
from fewshot_transfer.augment import AugmentConfig, augment_batch
from fewshot_transfer.config import config_hash
from fewshot_transfer.data.slices import SliceSet
from fewshot_transfer.losses import seg_loss
from fewshot_transfer.models.unet import UNet, build_unet

log = logging.getLogger(__name__)

#: Bump when source pretraining changes in a way that invalidates cached models.
PRETRAIN_VERSION = 1


class TrainingDiverged(RuntimeError):
    """A loss became NaN/Inf; the harness records the cell as failed and moves on."""


ProgressCallback = Callable[[int, dict[str, float]], None]


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


class Segmenter:
    """A trained model wrapped for inference on normalized numpy slices."""

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


class ModelCache:
    """Trained weights on disk keyed by what they depend on; shared by learners, k and processes.

    Source pretraining and meta-training are k-independent: the first cell that needs one
    trains it, later cells (and reruns) load it. Files are written atomically, so a killed
    process never leaves a truncated checkpoint behind.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: dict) -> Path:
        return self.root / f"{kind}-{config_hash(key)}.pt"

    def get_or_train(
        self, kind: str, key: dict, train: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """Return the cached object for ``key`` or build it with ``train()`` and store it."""
        p = self.path(kind, key)
        tag = str(p)
        if tag in self._memory:
            self.hits += 1
            return copy.deepcopy(self._memory[tag])
        if p.is_file():
            try:
                obj = torch.load(p, map_location="cpu", weights_only=True)
                self._memory[tag] = obj
                self.hits += 1
                return copy.deepcopy(obj)
            except Exception as exc:  # a corrupt file is rebuilt, never trusted
                log.warning("discarding unreadable cached model %s (%s)", p, exc)
        self.misses += 1
        obj = train()
        with atomic_open(p, "wb") as fh:
            torch.save(obj, fh)
        self._memory[tag] = obj
        return copy.deepcopy(obj)


@dataclass
class LearnerContext:
    """Everything a learner may use for one (learner, k, seed) cell."""

    source_train: SliceSet
    source_val: SliceSet
    support: SliceSet
    unlabeled: SliceSet
    k: int
    seed: int
    config: dict
    params: dict
    device: torch.device
    cache: ModelCache
    callback: ProgressCallback | None = None
    curves: LossCurves = field(default_factory=LossCurves)
    train_seconds: float = 0.0
    _report_every: int = 10

    @property
    def train_cfg(self) -> dict:
        return self.config["train"]

    def torch_generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from the cell seed (augmentation, sampling)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def new_model(self, salt: int = 0) -> UNet:
        """A freshly initialized backbone; the same seed gives the same weights on CPU."""
        torch.manual_seed(self.seed * 7919 + salt)
        return build_unet(self.config["model"]).to(self.device)

    def source_model(self) -> UNet:
        """The source-pretrained backbone for this seed (trained once, cached on disk)."""
        return pretrained_source_model(self)

    def to_tensors(self, data: SliceSet, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``idx`` as ``[B, 1, H, W]`` float tensors on the device."""
        x = torch.from_numpy(data.images[idx]).unsqueeze(1).to(self.device, torch.float32)
        y = torch.from_numpy(data.masks[idx]).unsqueeze(1).to(self.device, torch.float32)
        return x, y

    def augment(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = AugmentConfig(enabled=bool(self.train_cfg.get("augment", True)))
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
        return Segmenter(model, self.device, float(self.train_cfg["threshold"]), int(self.train_cfg["eval_batch"]))


class Learner:
    """Base class: subclasses set ``name``/``family``/flags and implement :meth:`fit`.

    ``defaults`` are the learner's hyperparameters (overridden by ``[learners.NAME]`` in
    the config); :meth:`search_space` declares what ``ftbench tune`` searches.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "baseline"
    uses_source: ClassVar[bool] = False
    uses_target: ClassVar[bool] = True
    uses_unlabeled: ClassVar[bool] = False
    #: True when the result does not depend on k (source-only): one cell per seed.
    k_independent: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def resolve_params(cls, config: dict) -> dict:
        """Learner defaults < the run's [train] schedule < ``[learners.NAME]``."""
        train = config["train"]
        base = {"steps": train["steps"], "lr": train["lr"], "batch_size": train["batch_size"]}
        params = {**base, **cls.defaults, **config.get("learners", {}).get(cls.name, {})}
        unknown = set(config.get("learners", {}).get(cls.name, {})) - set(base) - set(cls.defaults)
        if unknown:
            raise ValueError(
                f"unknown hyperparameters {sorted(unknown)} for learner {cls.name!r}; "
                f"valid: {sorted(set(base) | set(cls.defaults))}"
            )
        return params

    @staticmethod
    def search_space(trial: Any) -> dict[str, Any]:
        """Hyperparameters for Optuna (``trial.suggest_*``); the default tunes lr and steps."""
        return {
            "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
            "steps": trial.suggest_int("steps", 50, 300, step=25),
        }

    def fit(self, ctx: LearnerContext) -> Segmenter:
        raise NotImplementedError


REGISTRY: dict[str, type[Learner]] = {}


def register(cls: type[Learner]) -> type[Learner]:
    """Class decorator adding a learner to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"learner name {cls.name!r} registered twice ({REGISTRY[cls.name].__name__}, {cls.__name__})")
    REGISTRY[cls.name] = cls
    return cls


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


def slice_batches(ctx: LearnerContext, data: SliceSet, batch_size: int, salt: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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


def pretrained_source_model(ctx: LearnerContext) -> UNet:
    """Train (or load) the backbone on labeled source slices for this seed."""
    steps = int(ctx.train_cfg["pretrain_steps"])
    key = {
        "version": PRETRAIN_VERSION,
        "source": ctx.source_train.fingerprint,
        "source_rows": len(ctx.source_train),
        "model": ctx.config["model"],
        "steps": steps,
        "lr": ctx.train_cfg["lr"],
        "batch_size": ctx.train_cfg["batch_size"],
        "augment": ctx.train_cfg.get("augment", True),
        "seed": ctx.seed,
    }

    def train() -> dict[str, Any]:
        model = ctx.new_model(salt=1)
        batches = slice_batches(ctx, ctx.source_train, int(ctx.train_cfg["batch_size"]), salt=101)
        train_supervised(ctx, model, batches, steps=steps, lr=float(ctx.train_cfg["lr"]), phase="pretrain")
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    state = ctx.cache.get_or_train("source", key, train)
    model = ctx.new_model(salt=1)
    model.load_state_dict(state)
    return model
