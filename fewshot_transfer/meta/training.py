"""Meta-training on CAP tasks (cached, shared across k) and test-time adaptation on the k shots.

**Test time is the common budget** (``adaptation = "common"``, every meta-learner's
default): exactly finetune's loop (``train_steps`` on ``slice_batches(ctx, ctx.support,
batch_size)``, ``steps`` Adam steps at ``lr``, phase ``"target"``) from the meta-trained
init, restricted to the adapted parameters (ANIL: the head). So a meta-learner with 0
meta-steps *is* finetune (or, for ANIL, head-only fine-tuning of the source model: the
``anil-control`` row), and "what meta-training adds" is the paired difference
meta-learner − control. ``adaptation = "fewstep"`` (the ``maml-fewstep`` row) is MAML as
Finn et al. train and test it: ``test_steps`` plain SGD steps at ``inner_lr``.

**The inner loop matches the test-time procedure**: the same optimizer (Adam for
``common``, SGD for ``fewstep``) at the same step size (``lr`` / ``inner_lr``) on the same
parameters, for ``inner_steps`` steps on a task's support slices. One task = one CAP
patient (``source_meta_tasks``), ``n_support`` slices to adapt on and ``n_query`` disjoint
slices to score the adaptation. The outer loop is Adam on the mean post-adaptation query
loss (``meta_opt = "adam"``) or, for Reptile, the interpolation
``θ ← θ + ε (φ̄ − θ)`` with ``ε = meta_lr`` (``meta_opt = "sgd"`` on the pseudo-gradient
``θ − φ̄``; ``meta_opt = "adam"`` is the named Adam variant).

**Meta-validation** shows whether meta-training did anything: the same inner loop on
``n_val_tasks`` fixed, un-augmented tasks from the *source validation* patients, query
loss before (at the init) and after meta-training, plus how far the init moved. It goes to
``ctx.summary["meta"]`` and to the loss curves (phase ``meta-val``); when meta-training
does not lower it, the learner logs a warning and sets ``improved = False``.

**Meta-SGD** learns element-wise rates α (initialized to the inner step size), clamped at
0 after every outer step (a negative rate would ascend the loss). Scaling rule: α
replaces the scalar step size element-wise, unscaled — the inner loop and the test-time
loop use the same step size, so a parameter's test-time update is ``α / lr`` times the
update finetune's Adam would make (``α = lr`` everywhere, i.e. 0 meta-steps, is finetune).

Caching: ``ctx.cache.get_or_train("meta-<learner>", key, ...)``; the key holds every
meta-training setting (``META_VERSION``, algorithm, inner optimizer and step size, outer
optimizer, budgets, task sizes, init, effective ``mix_target``), the model shape, the
seed, the source data and the pretraining settings, but not k or the test-time budget,
so the k of one seed meta-train once (ModelCache adds the code hash).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from fewshot_transfer.data.samplers import MetaTask, source_meta_tasks
from fewshot_transfer.losses import seg_loss
from fewshot_transfer.meta.engine import (
    LR,
    Task,
    accumulate_grads,
    adapted_query_loss,
    init_lrs,
    meta_gradient,
    module_params,
    names_matching,
    reptile_direction,
)
from fewshot_transfer.models.unet import UNet
from fewshot_transfer.training import (
    PRETRAIN_VERSION,
    LearnerContext,
    Segmenter,
    StepBatch,
    StepHooks,
    slice_batches,
    train_steps,
)

log = logging.getLogger(__name__)

#: Bump when meta-training changes in a way that invalidates cached meta-models.
#: 2: inner loop = the test-time optimizer, Reptile interpolation, clamped Meta-SGD rates,
#: meta-validation summary stored with the weights.
META_VERSION = 2
ALGORITHMS = ("maml", "reptile")
ADAPTATIONS = ("common", "fewstep")
META_OPTS = ("adam", "sgd")
INITS = ("source", "scratch")
#: Parameter-name prefixes the ANIL inner loop adapts, per ``head`` choice.
HEAD_SCOPES = ("head", "last_block")
_SUMMARY = "meta::"


@dataclass(frozen=True)
class MetaConfig:
    """What one meta-learner does. ``steps``, ``batch_size`` and ``test_steps`` are test-time
    only; everything else goes in the meta-model's cache key."""

    algorithm: str = "maml"
    first_order: bool = False
    learn_lr: bool = False
    adapt: tuple[str, ...] | None = None  # parameter-name prefixes adapted; None = all
    adaptation: str = "common"
    lr: float = 3e-3  # common: test-time and inner-loop Adam step size
    steps: int = 200  # common: test-time steps (the common target budget)
    batch_size: int = 8
    inner_lr: float = 0.01  # fewstep: inner-loop and test-time SGD step size
    test_steps: int = 10  # fewstep: test-time SGD steps
    inner_steps: int = 5
    meta_opt: str = "adam"
    meta_lr: float = 1e-3
    meta_steps: int = 40
    meta_batch: int = 4
    n_support: int = 5
    n_query: int = 5
    n_val_tasks: int = 8
    init: str = "source"
    mix_target: float = 0.0

    def __post_init__(self) -> None:
        for name, allowed in (
            ("algorithm", ALGORITHMS),
            ("adaptation", ADAPTATIONS),
            ("meta_opt", META_OPTS),
            ("init", INITS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.mix_target <= 1.0:
            raise ValueError(f"mix_target is a probability in [0, 1], got {self.mix_target}")
        for name in ("steps", "inner_steps", "meta_steps", "test_steps", "n_val_tasks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("meta_batch", "n_support", "n_query", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.lr, self.inner_lr, self.meta_lr) <= 0:
            raise ValueError(
                f"lr, inner_lr and meta_lr must be positive, got {self.lr}, {self.inner_lr}, {self.meta_lr}"
            )

    @classmethod
    def from_params(cls, params: Any, **fixed: Any) -> MetaConfig:
        """A config from a learner's resolved params plus the learner's fixed choices."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in dict(params).items() if k in known}, **fixed})

    @property
    def inner_opt(self) -> str:
        """The inner loop's optimizer: the one the learner is tested with."""
        return "adam" if self.adaptation == "common" else "sgd"

    @property
    def inner_rate(self) -> float:
        """The inner loop's step size: the test-time one."""
        return self.lr if self.adaptation == "common" else self.inner_lr

    def train_key(self) -> dict:
        skip = {"steps", "batch_size", "test_steps", "lr", "inner_lr"}
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return {**d, "inner_opt": self.inner_opt, "inner_rate": self.inner_rate}


def head_prefixes(scope: str, model: UNet) -> tuple[str, ...]:
    """ANIL's adapted scope: ``head`` = the final 1x1 conv (``head.*``); ``last_block``
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
    train = ctx.train
    key: dict[str, Any] = {
        "version": META_VERSION,
        "learner": name,
        "meta": {**cfg.train_key(), "mix_target": effective_mix(cfg, ctx.k)},
        "model": ctx.model,
        "seed": ctx.seed,
        "source": ctx.source_train.fingerprint,
        "source_rows": len(ctx.source_train),
        "source_val": ctx.source_val.fingerprint,
        "augment": train.augment,
    }
    if cfg.init == "source":
        key["pretrain"] = {
            "version": PRETRAIN_VERSION,
            "steps": train.pretrain_steps,
            "lr": train.lr,
            "batch_size": train.batch_size,
        }
    if effective_mix(cfg, ctx.k) > 0:
        key["support"] = {
            "fingerprint": ctx.support.fingerprint,
            "patients": ctx.support.patients.tolist(),
            "slices": ctx.support.slice_index.tolist(),
            "k": ctx.k,
        }
    return key


def task_sizes(data, n_support: int, n_query: int) -> tuple[int, int]:
    """(n_support, n_query), shrunk proportionally (with a warning) when no patient has
    ``n_support + n_query`` labeled slices -- e.g. a tiny phantom or 2-3 slices per patient."""
    labeled = np.flatnonzero(data.labeled.astype(bool))
    _, counts = np.unique(data.patients[labeled].astype(str), return_counts=True)
    most = int(counts.max()) if counts.size else 0
    need = n_support + n_query
    if most >= need or most < 2:
        return n_support, n_query  # fits, or cannot be helped: the sampler raises a clear error
    s = int(np.clip(round(most * n_support / need), 1, most - 1))
    log.warning(
        "meta-tasks need %d slices per patient but the largest patient of %s has %d; using n_support=%d, n_query=%d",
        need,
        data.name,
        most,
        s,
        most - s,
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


def validation_tasks(ctx: LearnerContext, cfg: MetaConfig) -> list[Task]:
    """Fixed, un-augmented tasks from the source validation patients (empty when none fits)."""
    if cfg.n_val_tasks == 0:
        return []
    data = ctx.source_val
    n_s, n_q = task_sizes(data, cfg.n_support, cfg.n_query)
    try:
        stream = source_meta_tasks(data, n_support=n_s, n_query=n_q, seed=ctx.seed * 7_001 + 97)
    except ValueError as exc:
        log.warning("no meta-validation tasks: %s", exc)
        return []
    out = []
    for _ in range(cfg.n_val_tasks):
        t = next(stream)
        out.append(Task(*ctx.to_tensors(data, t.support), *ctx.to_tensors(data, t.query)))
    return out


def adapted_names(model: UNet, cfg: MetaConfig) -> list[str]:
    return names_matching(model, cfg.adapt) if cfg.adapt else [n for n, _ in model.named_parameters()]


def meta_val_loss(model: UNet, lr: LR, cfg: MetaConfig, tasks: Sequence[Task]) -> float:
    """Query loss on the meta-validation tasks after the learner's own inner loop."""
    if not tasks:
        return float("nan")
    return adapted_query_loss(
        model,
        module_params(model),
        tasks,
        steps=cfg.inner_steps,
        lr=lr,
        opt=cfg.inner_opt,
        adapt_names=adapted_names(model, cfg),
    )


def initial_model(ctx: LearnerContext, cfg: MetaConfig) -> UNet:
    return ctx.source_model() if cfg.init == "source" else ctx.new_model(salt=2)


def run_meta_training(ctx: LearnerContext, name: str, cfg: MetaConfig) -> dict[str, torch.Tensor]:
    """Meta-train from the configured init; returns the state dict, Meta-SGD rates
    (``lr::NAME``) and the meta-validation summary (``meta::KEY``)."""
    model = initial_model(ctx, cfg)
    model.train()
    names = adapted_names(model, cfg)
    params = dict(model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    lrs: LR = float(cfg.inner_rate)
    trainable = list(params.values())
    if cfg.learn_lr:
        lrs = {n: v.requires_grad_(True) for n, v in init_lrs(module_params(model), cfg.inner_rate, names).items()}
        trainable += list(lrs.values())
    opt_cls = torch.optim.Adam if cfg.meta_opt == "adam" else torch.optim.SGD
    opt = opt_cls(trainable, lr=cfg.meta_lr)
    val = validation_tasks(ctx, cfg)
    before = meta_val_loss(model, lrs, cfg, val)
    stream = TaskStream(ctx, cfg, salt=zlib.crc32(name.encode()) % 10_000)
    t0 = time.perf_counter()
    for step in range(1, cfg.meta_steps + 1):
        tasks = stream.next()
        if cfg.algorithm == "reptile":
            out = reptile_direction(
                model,
                params,
                tasks,
                steps=cfg.inner_steps,
                lr=float(cfg.inner_rate),
                opt=cfg.inner_opt,
                adapt_names=names,
            )
        else:
            out = meta_gradient(
                model,
                params,
                tasks,
                steps=cfg.inner_steps,
                lr=lrs,
                opt=cfg.inner_opt,
                first_order=cfg.first_order,
                adapt_names=names,
                learn_lr=cfg.learn_lr,
            )
        opt.zero_grad(set_to_none=True)
        accumulate_grads(params, out.grads)
        if out.lr_grads is not None and isinstance(lrs, dict):
            accumulate_grads(lrs, out.lr_grads)
        opt.step()
        if isinstance(lrs, dict):
            with torch.no_grad():
                torch._foreach_clamp_min_(list(lrs.values()), 0.0)
        ctx.report("meta", step, {"query": out.loss})
    ctx.train_seconds += time.perf_counter() - t0
    after = meta_val_loss(model, lrs, cfg, val)
    if stream.n_target_tasks:
        log.info(
            "%s: %d of %d meta-training tasks came from the k shots",
            name,
            stream.n_target_tasks,
            cfg.meta_steps * cfg.meta_batch,
        )
    with torch.no_grad():
        shift = torch.sqrt(sum(((p - start[n]) ** 2).sum() for n, p in params.items()))
        norm = torch.sqrt(sum((v**2).sum() for v in start.values()))
        max_shift = max(float((p - start[n]).abs().max()) for n, p in params.items())
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if isinstance(lrs, dict):
        state.update({f"lr::{n}": v.detach().cpu().clone() for n, v in lrs.items()})
    summary = {
        "val_loss_before": before,
        "val_loss_after": after,
        "val_tasks": float(len(val)),
        "init_shift_rel": float(shift / norm),
        "init_shift_max": max_shift,
    }
    state.update({f"{_SUMMARY}{k}": torch.tensor(v, dtype=torch.float64) for k, v in summary.items()})
    return state


def meta_trained(ctx: LearnerContext, name: str, cfg: MetaConfig) -> tuple[UNet, LR]:
    """The meta-trained backbone and inner rate(s) for this seed (cached; with 0 meta-steps
    the source model itself). Records the meta-validation summary on the context."""
    if cfg.meta_steps == 0:
        model = initial_model(ctx, cfg)
        loss = meta_val_loss(model, float(cfg.inner_rate), cfg, validation_tasks(ctx, cfg))
        summary = {"val_loss_before": loss, "val_loss_after": loss, "init_shift_rel": 0.0, "init_shift_max": 0.0}
        _record(ctx, name, cfg, summary)
        return model, float(cfg.inner_rate)
    state = ctx.cache.get_or_train(f"meta-{name}", cache_key(ctx, name, cfg), lambda: run_meta_training(ctx, name, cfg))
    model = ctx.new_model(salt=2)
    model.load_state_dict({k: v for k, v in state.items() if "::" not in k})
    learned = {k[4:]: v.to(ctx.device) for k, v in state.items() if k.startswith("lr::")}
    _record(ctx, name, cfg, {k[len(_SUMMARY) :]: float(v) for k, v in state.items() if k.startswith(_SUMMARY)})
    return model, (learned or float(cfg.inner_rate))


def _record(ctx: LearnerContext, name: str, cfg: MetaConfig, summary: dict[str, float]) -> None:
    before, after = summary["val_loss_before"], summary["val_loss_after"]
    improved = bool(after < before) if cfg.meta_steps else None
    ctx.summary["meta"] = {
        **summary,
        "meta_steps": cfg.meta_steps,
        "improved": improved,
        "adaptation": cfg.adaptation,
        "inner_opt": cfg.inner_opt,
        "inner_steps": cfg.inner_steps,
    }
    ctx.curves.add("meta-val", 0, {"query": before})
    ctx.curves.add("meta-val", cfg.meta_steps, {"query": after})
    if improved is False:
        log.warning(
            "%s (seed %d): meta-training did not lower the meta-validation loss (%.4f -> %.4f)",
            name,
            ctx.seed,
            before,
            after,
        )
    else:
        log.info("%s (seed %d): meta-validation loss %.4f -> %.4f", name, ctx.seed, before, after)


class RateHooks(StepHooks):
    """Meta-SGD's learned element-wise rates on top of the common Adam loop: each step's
    update is rescaled by ``clamp(α, 0) / lr`` (identity where α equals the loop's lr)."""

    def __init__(self, model: UNet, scale: dict[str, torch.Tensor]) -> None:
        self.params = {n: p for n, p in model.named_parameters() if n in scale}
        self.scale = scale
        self.before: dict[str, torch.Tensor] = {}

    def terms(self, batch: StepBatch) -> tuple[list, dict[str, float]]:
        self.before = {n: p.detach().clone() for n, p in self.params.items()}
        return [], {}

    def after_step(self, batch: StepBatch) -> dict[str, float]:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.before[n] + self.scale[n] * (p - self.before[n]))
        return {}


def test_rate_scale(lr: LR, cfg: MetaConfig) -> dict[str, torch.Tensor] | None:
    """Meta-SGD's per-element multipliers of the test-time step, ``clamp(α, 0) / step size``;
    None when there are no learned rates or all multipliers are exactly 1."""
    if not isinstance(lr, dict):
        return None
    scale = {n: v.clamp_min(0.0) / cfg.inner_rate for n, v in lr.items()}
    return None if all(bool((s == 1).all()) for s in scale.values()) else scale


def adapt_to_shots(ctx: LearnerContext, model: UNet, lr: LR, cfg: MetaConfig) -> UNet:
    """Test time on the k shots with finetune's stream: the common Adam loop (adapted
    parameters only) or, for ``fewstep``, ``test_steps`` plain SGD steps at ``inner_lr``."""
    names = set(adapted_names(model, cfg))
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    batches = slice_batches(ctx, ctx.support, cfg.batch_size)
    if cfg.adaptation == "common":
        scale = test_rate_scale(lr, cfg)
        hooks = RateHooks(model, scale) if scale is not None else None
        train_steps(ctx, model, batches, steps=cfg.steps, lr=cfg.lr, phase="target", hooks=hooks)
    else:
        _sgd_steps(ctx, model, batches, lr, cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def _sgd_steps(ctx: LearnerContext, model: UNet, batches, lr: LR, cfg: MetaConfig) -> None:
    """MAML's own test-time procedure: plain SGD at the inner step size (element-wise for Meta-SGD)."""
    gen = ctx.torch_generator(salt=zlib.crc32(b"target") % 10_000)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    model.train()
    t0 = time.perf_counter()
    for step in range(1, cfg.test_steps + 1):
        x, y = ctx.augment(*next(batches), gen)
        loss = seg_loss(model(x), y)
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        with torch.no_grad():
            for (n, p), g in zip(params, grads):
                if g is not None:
                    p.sub_((lr[n].clamp_min(0.0) if isinstance(lr, dict) else lr) * g)
        ctx.report("target", step, {"seg": float(loss.detach())})
    ctx.train_seconds += time.perf_counter() - t0


def fit_meta(ctx: LearnerContext, name: str, cfg: MetaConfig) -> Segmenter:
    """The whole meta-learner: cached meta-training, adaptation on the shots, a Segmenter."""
    model, lr = meta_trained(ctx, name, cfg)
    return ctx.segmenter(adapt_to_shots(ctx, model, lr, cfg))
