"""Meta-training on source tasks (cached, shared across k) and meta-test adaptation on the k shots.

One task = one CAP patient (``source_meta_tasks``): ``n_support`` slices to adapt on,
``n_query`` disjoint slices of the same patient to score the adaptation. The outer loop
is Adam on the mean post-adaptation query loss (the shared :func:`seg_loss`, which is
also the inner-loop loss), or on Reptile's pseudo-gradient.

Initialization: meta-training starts from the cached source-pretrained backbone
(``init = "source"``, the default) rather than from a fresh one. The source model is
trained once per seed for the baselines anyway, so this costs nothing extra, and a few
dozen meta-steps then refine an init that already segments CAP lesions instead of having
to learn segmentation from scratch (``init = "scratch"`` is available; see
docs/meta_learning.md for the measured comparison).

Caching: the meta-trained weights (and Meta-SGD learning rates, stored as ``lr::NAME``)
go through ``ctx.cache.get_or_train("meta-<learner>", key, ...)``. The key holds every
meta-training setting, the model shape, the seed, the source data fingerprint and the
pretraining settings, but *not* k and not the test-time settings, so the three k of one
seed meta-train once. With ``mix_target > 0`` and k >= 2 the meta-training also sees
tasks built from the k shots; the key then includes the support set and no sharing
across k happens (for k = 1 the option has no effect and the shared model is used).

Meta-test: ``test_steps`` SGD steps (the inner-loop update, on the same parameters the
inner loop adapts) at ``test_lr`` on minibatches of ``batch_size`` augmented shots drawn
with replacement, as ``finetune`` draws them. The test step size is separate from
``inner_lr`` on purpose: on the default benchmark one SGD step at 0.05 on a 5-slice CAP
support set *raises* the query loss (the inner step overshoots; first-order meta-training
then drifts to predicting no lesion), while 0.01 is benign; at meta-test, 30 steps at
0.05 adapted best (Dice 0.45 vs 0.33 at 0.02 and 0.13 at 0.2, k = 1, seed 0). Meta-SGD's
learned rates keep their per-parameter profile, scaled by ``test_lr / inner_lr``.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from fewshot_transfer.data.samplers import MetaTask, source_meta_tasks
from fewshot_transfer.meta.engine import (
    LR,
    Task,
    accumulate_grads,
    init_lrs,
    meta_gradient,
    module_params,
    names_matching,
    reptile_direction,
    sgd_step,
)
from fewshot_transfer.models.unet import UNet
from fewshot_transfer.training import PRETRAIN_VERSION, LearnerContext, slice_batches

log = logging.getLogger(__name__)

#: Bump when meta-training changes in a way that invalidates cached meta-models.
META_VERSION = 1
ALGORITHMS = ("maml", "reptile")
INITS = ("source", "scratch")
#: Parameter-name prefixes the ANIL inner loop adapts, per ``head`` choice.
HEAD_SCOPES = ("head", "last_block")

@dataclass(frozen=True)
class MetaConfig:
    """What one meta-learner does; everything except ``test_steps`` goes in the cache key."""

    algorithm: str = "maml"
    first_order: bool = False
    learn_lr: bool = False
    adapt: tuple[str, ...] | None = None  # parameter-name prefixes of the inner loop; None = all
    inner_lr: float = 0.01
    inner_steps: int = 1
    meta_lr: float = 5e-4
    meta_steps: int = 30
    meta_batch: int = 4
    n_support: int = 5
    n_query: int = 5
    init: str = "source"
    mix_target: float = 0.0
    vmap: bool = False
    test_steps: int = 30
    test_lr: float = 0.05
    test_batch: int = 8

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown meta algorithm {self.algorithm!r}; choose one of {ALGORITHMS}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not 0.0 <= self.mix_target <= 1.0:
            raise ValueError(f"mix_target is a probability in [0, 1], got {self.mix_target}")
        for name in ("inner_steps", "meta_steps", "test_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("meta_batch", "n_support", "n_query", "test_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.inner_lr, self.meta_lr, self.test_lr) <= 0:
            raise ValueError(
                f"inner_lr, meta_lr and test_lr must be positive, got {self.inner_lr}, {self.meta_lr}, {self.test_lr}"
            )

    @classmethod
    def from_params(cls, params: dict, **fixed: Any) -> MetaConfig:
        """A config from a learner's resolved params plus the learner's fixed choices."""
        fields = set(cls.__dataclass_fields__)
        given = {k: v for k, v in params.items() if k in fields}
        given["test_batch"] = int(params.get("batch_size", cls.test_batch))
        cfg = cls(**{**given, **fixed})
        return cfg

    def train_key(self) -> dict:
        d = asdict(self)
        for test_only in ("test_steps", "test_lr", "test_batch"):
            d.pop(test_only)
        return d


#: MetaConfig fields each learner fixes in code (or that come from ``batch_size``), not hyperparameters.
_FIXED_FIELDS = ("algorithm", "first_order", "learn_lr", "adapt", "test_batch")
#: Hyperparameters every meta-learner shares, derived from :class:`MetaConfig` (written once).
#: ``steps``/``lr`` inherited from ``[train]`` are not used by meta-learners; ``batch_size``
#: is the test-time adaptation minibatch.
META_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(MetaConfig) if f.name not in _FIXED_FIELDS}


def head_prefixes(scope: str, model: UNet) -> tuple[str, ...]:
    """ANIL's inner-loop scope: ``head`` = the final 1x1 conv (``head.*``); ``last_block``
    adds the last (full-resolution) decoder block."""
    if scope == "head":
        return ("head.",)
    if scope == "last_block":
        return (f"decoders.{len(model.decoders) - 1}.", "head.")
    raise ValueError(f"ANIL head scope must be one of {HEAD_SCOPES}, got {scope!r}")


def effective_mix(cfg: MetaConfig, k: int) -> float:
    """Target-task mixing applies only when a support/query split of the shots exists (k >= 2)."""
    return cfg.mix_target if k >= 2 else 0.0


def cache_key(ctx: LearnerContext, name: str, cfg: MetaConfig) -> dict:
    train = ctx.train_cfg
    key: dict[str, Any] = {
        "version": META_VERSION,
        "learner": name,
        "meta": {**cfg.train_key(), "mix_target": effective_mix(cfg, ctx.k)},
        "model": ctx.config["model"],
        "seed": ctx.seed,
        "source": ctx.source_train.fingerprint,
        "source_rows": len(ctx.source_train),
        "augment": train.get("augment", True),
    }
    if cfg.init == "source":
        key["pretrain"] = {
            "version": PRETRAIN_VERSION,
            "steps": train["pretrain_steps"],
            "lr": train["lr"],
            "batch_size": train["batch_size"],
        }
    if effective_mix(cfg, ctx.k) > 0:
        key["support"] = {"fingerprint": ctx.support.fingerprint, "patients": ctx.support.patients.tolist(),
                          "slices": ctx.support.slice_index.tolist(), "k": ctx.k}
    return key


def task_sizes(data, n_support: int, n_query: int) -> tuple[int, int]:
    """(n_support, n_query), shrunk proportionally (with a warning) when no source patient has
    ``n_support + n_query`` labeled slices -- e.g. a tiny phantom or 2-3 slices per patient."""
    labeled = np.flatnonzero(data.labeled.astype(bool))
    _, counts = np.unique(data.patients[labeled].astype(str), return_counts=True)
    most = int(counts.max()) if counts.size else 0
    need = n_support + n_query
    if most >= need or most < 2:
        return n_support, n_query  # fits, or cannot be helped: the sampler raises a clear error
    s = int(np.clip(round(most * n_support / need), 1, most - 1))
    log.warning(
        "meta-tasks need %d slices per patient but the largest source patient has %d; using "
        "n_support=%d, n_query=%d", need, most, s, most - s,
    )
    return s, most - s


class TaskStream:
    """Seeded meta-batches of augmented tasks: source patients, optionally mixed with target tasks."""

    def __init__(self, ctx: LearnerContext, cfg: MetaConfig, salt: int) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.n_support, self.n_query = task_sizes(ctx.source_train, cfg.n_support, cfg.n_query)
        self.source: Iterator[MetaTask] = source_meta_tasks(
            ctx.source_train, n_support=self.n_support, n_query=self.n_query, seed=ctx.seed * 7_001 + salt
        )
        self.rng = np.random.default_rng([ctx.seed, salt, 29])
        self.gen = ctx.torch_generator(salt=salt)
        self.mix = effective_mix(cfg, ctx.k)
        self.n_target_tasks = 0

    def _target_task(self) -> tuple[Any, np.ndarray, np.ndarray]:
        """Split the k shots into support/query (both non-empty), then resample each side
        with replacement to the source task sizes so every task has the same shape."""
        k = len(self.ctx.support)
        perm = self.rng.permutation(k)
        n_s = int(np.clip(round(k * self.n_support / (self.n_support + self.n_query)), 1, k - 1))
        s, q = perm[:n_s], perm[n_s:]
        s = self.rng.choice(s, self.n_support, replace=s.size < self.n_support)
        q = self.rng.choice(q, self.n_query, replace=q.size < self.n_query)
        return self.ctx.support, np.sort(s), np.sort(q)

    def next(self) -> list[Task]:
        tasks = []
        for _ in range(self.cfg.meta_batch):
            if self.mix > 0 and self.rng.random() < self.mix:
                data, s, q = self._target_task()
                self.n_target_tasks += 1
            else:
                t = next(self.source)
                data, s, q = self.ctx.source_train, t.support, t.query
            xs, ys = self.ctx.augment(*self.ctx.to_tensors(data, s), self.gen)
            xq, yq = self.ctx.augment(*self.ctx.to_tensors(data, q), self.gen)
            tasks.append(Task(xs, ys, xq, yq))
        return tasks


def initial_model(ctx: LearnerContext, cfg: MetaConfig) -> UNet:
    return ctx.source_model() if cfg.init == "source" else ctx.new_model(salt=2)


def run_meta_training(ctx: LearnerContext, name: str, cfg: MetaConfig) -> dict[str, torch.Tensor]:
    """Meta-train from the configured init; returns the state dict (plus ``lr::NAME`` rates)."""
    model = initial_model(ctx, cfg)
    model.train()
    adapt_names = names_matching(model, cfg.adapt) if cfg.adapt else None
    params = dict(model.named_parameters())
    lrs: LR = float(cfg.inner_lr)
    trainable = list(params.values())
    if cfg.learn_lr:
        lrs = {n: v.requires_grad_(True) for n, v in init_lrs(module_params(model), cfg.inner_lr, adapt_names).items()}
        trainable += list(lrs.values())
    opt = torch.optim.Adam(trainable, lr=cfg.meta_lr)
    stream = TaskStream(ctx, cfg, salt=zlib.crc32(name.encode()) % 10_000)
    mode = "vmap" if cfg.vmap else "loop"
    t0 = time.perf_counter()
    for step in range(1, cfg.meta_steps + 1):
        tasks = stream.next()
        if cfg.algorithm == "reptile":
            out = reptile_direction(model, params, tasks, steps=cfg.inner_steps, lr=lrs, adapt_names=adapt_names)
        else:
            out = meta_gradient(
                model, params, tasks, steps=cfg.inner_steps, lr=lrs, first_order=cfg.first_order,
                adapt_names=adapt_names, mode=mode, learn_lr=cfg.learn_lr,
            )
        opt.zero_grad(set_to_none=True)
        accumulate_grads(params, out.grads)
        if out.lr_grads is not None and isinstance(lrs, dict):
            accumulate_grads(lrs, out.lr_grads)
        opt.step()
        ctx.report("meta", step, {"query": out.loss})
    ctx.train_seconds += time.perf_counter() - t0
    if stream.n_target_tasks:
        log.info("%s: %d of %d meta-training tasks came from the k shots", name, stream.n_target_tasks, cfg.meta_steps * cfg.meta_batch)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if isinstance(lrs, dict):
        state.update({f"lr::{n}": v.detach().cpu().clone() for n, v in lrs.items()})
    return state


def meta_trained(ctx: LearnerContext, name: str, cfg: MetaConfig) -> tuple[UNet, LR]:
    """The meta-trained backbone and inner learning rate(s) for this seed (cached)."""
    state = ctx.cache.get_or_train(f"meta-{name}", cache_key(ctx, name, cfg), lambda: run_meta_training(ctx, name, cfg))
    model = ctx.new_model(salt=2)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("lr::")})
    lrs: LR = float(cfg.inner_lr)
    learned = {k[4:]: v.to(ctx.device) for k, v in state.items() if k.startswith("lr::")}
    if learned:
        lrs = learned
    return model, lrs


def meta_test_lr(lr: LR, cfg: MetaConfig) -> LR:
    """The meta-test step size: ``test_lr``; learned Meta-SGD rates keep their per-parameter
    profile, scaled by ``test_lr / inner_lr``."""
    if isinstance(lr, dict):
        return {n: v * (cfg.test_lr / cfg.inner_lr) for n, v in lr.items()}
    return float(cfg.test_lr)


def adapt_to_shots(ctx: LearnerContext, model: UNet, lr: LR, cfg: MetaConfig) -> UNet:
    """Meta-test: ``test_steps`` inner-loop SGD steps on the k shots; returns the adapted model."""
    lr = meta_test_lr(lr, cfg)
    adapt_names = names_matching(model, cfg.adapt) if cfg.adapt else None
    params = module_params(model)
    batches = slice_batches(ctx, ctx.support, cfg.test_batch, salt=313)
    gen = ctx.torch_generator(salt=zlib.crc32(b"meta-adapt") % 10_000)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, cfg.test_steps + 1):
        x, y = ctx.augment(*next(batches), gen)
        params, loss = sgd_step(model, params, x, y, lr=lr, first_order=True, adapt_names=adapt_names)
        params = {n: v.detach() for n, v in params.items()}
        ctx.report("adapt", step, {"seg": float(loss)})
    ctx.train_seconds += time.perf_counter() - t0
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])
    return model.eval()


def fit_meta(ctx: LearnerContext, name: str, cfg: MetaConfig):
    """The whole meta-learner: cached meta-training, adaptation on the shots, a Segmenter."""
    model, lr = meta_trained(ctx, name, cfg)
    return ctx.segmenter(adapt_to_shots(ctx, model, lr, cfg))


def meta_search_space(trial: Any, *, second_order: bool = True) -> dict[str, Any]:
    """Optuna space shared by the meta-learners (second-order ones get a smaller step budget)."""
    return {
        "inner_lr": trial.suggest_float("inner_lr", 0.002, 0.1, log=True),
        "inner_steps": trial.suggest_int("inner_steps", 1, 3 if second_order else 5),
        "meta_lr": trial.suggest_float("meta_lr", 1e-5, 3e-3, log=True),
        "meta_steps": trial.suggest_int("meta_steps", 10, 60 if second_order else 120, step=10),
        "test_steps": trial.suggest_int("test_steps", 10, 150, step=10),
        "test_lr": trial.suggest_float("test_lr", 0.005, 0.2, log=True),
    }
