"""The one meta-learning engine: MAML-family inner/outer loops on a plain module.

Everything is a function of an ordinary ``nn.Module`` and a dict of parameter tensors, run
through :func:`torch.func.functional_call` (no ``weight.fast`` attributes, no patched
layers, no BatchNorm running statistics: GroupNorm, the U-Net default). Gradients come
from ``torch.autograd.grad``:

* **second order** (``first_order=False``): every inner gradient is taken with
  ``create_graph=True`` and the update stays in the graph, so the outer gradient includes
  the Hessian-vector products (what ``higher`` does, without its module copies);
* **first order** (``first_order=True``, fixed lr): no graph through the inner loop at all.
  :func:`meta_gradient` on the module's own parameters adapts them *in place* with plain
  autograd and ``torch._foreach_*`` / foreach ``torch.optim`` updates (the same SGD / Adam
  the test-time loop uses) and restores them after each task; other parameter dicts are
  adapted as leaf copies through ``functional_call``. The outer gradient is the query
  gradient at the adapted weights.

Inner optimizers: ``"sgd"`` (``p - lr * g``) or ``"adam"`` (``torch.optim.Adam``'s update,
written differentiably for the second-order path; a zero second moment gets a zero
square-root gradient, as in ``higher``). ``lr`` is a float or, for Meta-SGD, a dict of
element-wise rate tensors.

Variants, all from the same functions:

* ``maml``    -- :func:`meta_gradient` with ``first_order=False``;
* ``fomaml``  -- ``first_order=True``;
* ``anil``    -- ``adapt_names`` = the head: the body's features are computed *once per
  task* (support and query) and only the 1x1 head is re-run in the inner loop; the outer
  gradient still reaches every parameter through those features;
* ``metasgd`` -- ``lr`` is a dict of per-parameter rates and :func:`meta_gradient` also
  returns their gradient (``lr_grads``);
* ``reptile`` -- :func:`reptile_direction`: ``mean_tasks(params - adapted)``.

The engine never imports ``higher`` or ``learn2learn`` (the tests cross-check against them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fewshot_transfer.losses import seg_loss

LossFn = Callable[[Tensor, Tensor], Tensor]
Params = dict[str, Tensor]
#: A scalar inner learning rate, or one tensor per adapted parameter (Meta-SGD).
LR = float | Mapping[str, Tensor]
OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


@dataclass(frozen=True)
class Task:
    """One meta-learning task: support (adapt on it) and query (score the adaptation)."""

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor


@dataclass
class MetaGradient:
    """Mean over tasks of the outer gradient, and the mean post-adaptation query loss."""

    grads: Params
    lr_grads: Params | None
    loss: float


def module_params(model: nn.Module, *, detach: bool = True) -> Params:
    """The module's parameters as a name -> tensor dict (detached by default)."""
    return {n: (p.detach() if detach else p) for n, p in model.named_parameters()}


def names_matching(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    """Parameter names starting with any of ``prefixes`` (e.g. ``["head."]`` for ANIL)."""
    names = [n for n, _ in model.named_parameters() if any(n.startswith(p) for p in prefixes)]
    if not names:
        raise ValueError(f"no parameter of {type(model).__name__} starts with {list(prefixes)}")
    return names


def init_lrs(params: Mapping[str, Tensor], lr: float, names: Iterable[str] | None = None) -> Params:
    """Per-parameter, element-wise learning rates (Meta-SGD), all starting at ``lr``."""
    chosen = list(names) if names is not None else list(params)
    return {n: torch.full_like(params[n], float(lr)) for n in chosen}


def _rate(lr: LR, name: str) -> Tensor | float:
    return lr[name] if isinstance(lr, Mapping) else lr


def _safe_sqrt(v: Tensor) -> Tensor:
    """``sqrt(v)`` whose gradient at ``v == 0`` is 0 instead of inf * 0 = NaN."""
    pos = v > 0
    return torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


@dataclass
class AdamState:
    """Moments of the differentiable Adam update (one per adapted parameter)."""

    step: int = 0
    m: Params = field(default_factory=dict)
    v: Params = field(default_factory=dict)


def sgd_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: LR) -> Params:
    """One SGD step ``p - lr * g`` on the parameters that have a gradient (others pass through);
    differentiable in ``params``, ``grads`` and a dict ``lr`` (learn2learn's ``maml_update``)."""
    out = dict(params)
    for name, g in grads.items():
        out[name] = params[name] - _rate(lr, name) * g
    return out


def adam_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: LR, state: AdamState) -> Params:
    """``torch.optim.Adam``'s step (no weight decay) as a differentiable function; ``state`` advances."""
    b1, b2 = ADAM_BETAS
    state.step += 1
    bc1, bc2 = 1 - b1**state.step, math.sqrt(1 - b2**state.step)
    out = dict(params)
    for name, g in grads.items():
        m = state.m[name] * b1 + (1 - b1) * g if name in state.m else (1 - b1) * g
        v = state.v[name] * b2 + (1 - b2) * g * g if name in state.v else (1 - b2) * g * g
        state.m[name], state.v[name] = m, v
        out[name] = params[name] - (_rate(lr, name) / bc1) * m / (_safe_sqrt(v) / bc2 + ADAM_EPS)
    return out


class _Forward:
    """Logits at a parameter dict. For a head-only inner loop on a model with a 1x1 ``head``
    conv fed by the ``dec1`` features (the U-Net), the body runs once per input and only the
    head is re-applied (ANIL's shortcut; the features keep their graph to the body)."""

    def __init__(self, model: nn.Module, params: Mapping[str, Tensor], names: Sequence[str]) -> None:
        self.model = model
        self.head_only = set(names) <= {"head.weight", "head.bias"} and isinstance(
            getattr(model, "head", None), nn.Conv2d
        )
        self.base = dict(params)
        self._feats: dict[int, Tensor] = {}

    def __call__(self, fast: Mapping[str, Tensor], x: Tensor) -> Tensor:
        if not self.head_only:
            return functional_call(self.model, {**self.base, **fast}, (x,))
        key = id(x)
        if key not in self._feats:
            self._feats[key] = functional_call(self.model, self.base, (x,), {"return_features": True})[1]["dec1"]
        w = fast.get("head.weight", self.base["head.weight"])
        b = fast.get("head.bias", self.base["head.bias"])
        return F.conv2d(self._feats[key], w, b)


def _requiring_grad(params: Mapping[str, Tensor]) -> Params:
    """Parameters the inner gradients can be taken w.r.t. (leaves where they were plain tensors)."""
    return {n: (v if v.requires_grad else v.detach().requires_grad_(True)) for n, v in params.items()}


def _check(params: Mapping[str, Tensor], names: Sequence[str], lr: LR, opt: str, steps: int) -> None:
    if steps < 0:
        raise ValueError(f"inner steps must be >= 0, got {steps}")
    if opt not in OPTIMIZERS:
        raise ValueError(f"unknown inner optimizer {opt!r}; choose one of {OPTIMIZERS}")
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"adapt_names not among the parameters: {missing[:5]}")
    if isinstance(lr, Mapping):
        absent = [n for n in names if n not in lr]
        if absent:
            raise KeyError(f"per-parameter lr missing for {absent[:5]}")


def _differentiable_adapt(
    fwd: _Forward,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    names: Sequence[str],
    *,
    steps: int,
    lr: LR,
    opt: str,
    first_order: bool,
    loss_fn: LossFn,
) -> Params:
    """Inner loop whose result stays in the graph (of ``params`` and of a dict ``lr``)."""
    fast = {n: params[n] for n in names}
    state = AdamState()
    for _ in range(steps):
        at = {n: v.detach().requires_grad_(True) for n, v in fast.items()} if first_order else fast
        loss = loss_fn(fwd(at, x), y)
        gs = torch.autograd.grad(loss, [at[n] for n in names], create_graph=not first_order, allow_unused=True)
        grads = {n: g for n, g in zip(names, gs) if g is not None}
        fast = sgd_update(fast, grads, lr) if opt == "sgd" else adam_update(fast, grads, lr, state)
    return fast


def _inplace_adapt(
    fwd: _Forward,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    names: Sequence[str],
    *,
    steps: int,
    lr: float,
    opt: str,
    loss_fn: LossFn,
) -> Params:
    """First-order inner loop without any graph through it: leaf copies updated in place by a
    foreach ``torch.optim`` optimizer (exactly the update the test-time loop applies)."""
    fast = {n: params[n].detach().clone().requires_grad_(True) for n in names}
    leaves = list(fast.values())
    cls = torch.optim.SGD if opt == "sgd" else torch.optim.Adam
    optimizer = cls(leaves, lr=float(lr), foreach=True)
    for _ in range(steps):
        loss = loss_fn(fwd(fast, x), y)
        for p, g in zip(leaves, torch.autograd.grad(loss, leaves, allow_unused=True)):
            p.grad = g  # None (a parameter the loss does not use) is skipped by the optimizer
        optimizer.step()
    return fast


def inner_adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: LR,
    opt: str = "sgd",
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    loss_fn: LossFn = seg_loss,
) -> Params:
    """``steps`` optimizer steps on ``loss_fn(model(x), y)``; returns the full adapted dict.

    Only ``adapt_names`` (default: all) change. With ``first_order=False`` the result is
    differentiable through every step (pass parameters that require grad); with
    ``first_order=True`` inner gradients are detached, so the result depends on ``params``
    (and a Meta-SGD ``lr``) only through the linear updates.
    """
    names = list(adapt_names) if adapt_names is not None else list(params)
    _check(params, names, lr, opt, steps)
    fwd = _Forward(model, params, names)
    if first_order and not isinstance(lr, Mapping) and not any(params[n].requires_grad for n in names):
        fast = _inplace_adapt(fwd, params, x, y, names, steps=steps, lr=lr, opt=opt, loss_fn=loss_fn)
        return {**params, **{n: v.detach() for n, v in fast.items()}}
    if not first_order:
        params = _requiring_grad(params)
        fwd = _Forward(model, params, names)
    fast = _differentiable_adapt(
        fwd, params, x, y, names, steps=steps, lr=lr, opt=opt, first_order=first_order, loss_fn=loss_fn
    )
    return {**params, **fast}


def task_query_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    lr: LR,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    steps: int,
    opt: str = "sgd",
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    loss_fn: LossFn = seg_loss,
) -> Tensor:
    """Query loss after adapting on the support set: the MAML outer objective of one task."""
    names = list(adapt_names) if adapt_names is not None else list(params)
    _check(params, names, lr, opt, steps)
    if not first_order:
        params = _requiring_grad(params)
    fwd = _Forward(model, params, names)
    fast = _differentiable_adapt(
        fwd, params, x_support, y_support, names, steps=steps, lr=lr, opt=opt, first_order=first_order, loss_fn=loss_fn
    )
    return loss_fn(fwd(fast, x_query), y_query)


def meta_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Task],
    *,
    steps: int,
    lr: LR,
    opt: str = "sgd",
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    learn_lr: bool | None = None,
    loss_fn: LossFn = seg_loss,
) -> MetaGradient:
    """Gradient of the mean post-adaptation query loss over ``tasks`` w.r.t. the init.

    Tasks are differentiated one at a time and summed (peak memory of one task).
    ``learn_lr`` (default: whether ``lr`` is a dict) also differentiates w.r.t. the
    per-parameter rates (Meta-SGD). Returned tensors carry no autograd graph.
    """
    if not tasks:
        raise ValueError("meta_gradient needs at least one task")
    learn_lr = isinstance(lr, Mapping) if learn_lr is None else learn_lr
    if learn_lr and not isinstance(lr, Mapping):
        raise ValueError("learn_lr=True needs per-parameter lr tensors (see init_lrs)")
    names = list(adapt_names) if adapt_names is not None else list(params)
    _check(params, names, lr, opt, steps)
    if first_order and not isinstance(lr, Mapping):
        return _first_order_gradient(model, params, tasks, names, steps=steps, lr=lr, opt=opt, loss_fn=loss_fn)
    p0 = {n: v.detach().requires_grad_(True) for n, v in params.items()}
    lr0: LR = {n: v.detach().requires_grad_(learn_lr) for n, v in lr.items()} if isinstance(lr, Mapping) else float(lr)
    inputs = list(p0.values()) + (list(lr0.values()) if learn_lr and isinstance(lr0, dict) else [])
    flat = [torch.zeros_like(v) for v in inputs]
    total = 0.0
    for t in tasks:
        loss = task_query_loss(
            model,
            p0,
            lr0,
            t.x_support,
            t.y_support,
            t.x_query,
            t.y_query,
            steps=steps,
            opt=opt,
            first_order=first_order,
            adapt_names=names,
            loss_fn=loss_fn,
        ) / len(tasks)
        gs = torch.autograd.grad(loss, inputs, allow_unused=True)
        torch._foreach_add_(flat, [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gs)])
        total += float(loss.detach())
        del loss, gs
    g_params = dict(zip(p0, flat[: len(p0)]))
    lr_grads = dict(zip(list(lr0), flat[len(p0) :])) if learn_lr and isinstance(lr0, dict) else None
    return MetaGradient(grads=g_params, lr_grads=lr_grads, loss=total)


def _aliases_module(model: nn.Module, params: Mapping[str, Tensor]) -> dict[str, nn.Parameter] | None:
    """The module's own parameters when ``params`` are exactly them (or detached views of
    them, as :func:`module_params` returns); None otherwise."""
    mod = dict(model.named_parameters())
    if set(mod) != set(params):
        return None
    for n, p in mod.items():
        v = params[n]
        if v.data_ptr() != p.data_ptr() or v.shape != p.shape or v.stride() != p.stride() or v.dtype != p.dtype:
            return None
    return mod


def _first_order_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Task],
    names: Sequence[str],
    *,
    steps: int,
    lr: LR,
    opt: str,
    loss_fn: LossFn,
) -> MetaGradient:
    """First order with a fixed lr: the query gradient at the adapted weights, summed over tasks.

    When ``params`` are the module's own parameters (the meta-training loop, the benchmark)
    the inner loop runs on them *in place*: plain ``torch.autograd`` on the real module (no
    ``functional_call``, no per-task parameter copies), SGD as one ``torch._foreach_add_``
    (what a momentum-free foreach ``torch.optim.SGD`` does), Adam by a fresh foreach
    ``torch.optim.Adam``; the query gradient accumulates into ``.grad`` across tasks and the
    adapted parameters are restored from one snapshot after each task. The module's
    parameters, their ``.grad`` and ``requires_grad`` are left as they were.
    """
    mod = _aliases_module(model, params)
    if mod is None:
        return _first_order_gradient_functional(
            model, params, tasks, names, steps=steps, lr=lr, opt=opt, loss_fn=loss_fn
        )
    keys = list(mod)
    plist = list(mod.values())
    adapted = [mod[n] for n in names]
    head = _Forward(model, params, names).head_only

    def forward(inp: Tensor) -> Tensor:
        if head:
            return F.conv2d(inp, model.head.weight, model.head.bias)  # type: ignore[union-attr]
        return model(inp)

    saved_grads = [p.grad for p in plist]
    saved_flags = [p.requires_grad for p in plist]
    total = 0.0
    try:
        for p in plist:
            p.grad = None
            p.requires_grad_(True)
        with torch.no_grad():
            init = [p.detach().clone() for p in adapted]
        for t in tasks:
            query_acc = [p.grad for p in plist]
            for p in plist:
                p.grad = None
            if head:  # ANIL: the body's features once per task, only the 1x1 head re-run
                with torch.no_grad():
                    inp = model(t.x_support, return_features=True)[1]["dec1"]
            else:
                inp = t.x_support
            optimizer = torch.optim.Adam(adapted, lr=float(lr), foreach=True) if opt == "adam" else None  # type: ignore[arg-type]
            for _ in range(steps):
                loss_fn(forward(inp), t.y_support).backward(inputs=adapted)
                if optimizer is not None:
                    optimizer.step()  # parameters whose .grad is None (unused by the loss) are skipped
                else:
                    with torch.no_grad():
                        used = [p for p in adapted if p.grad is not None]
                        if used:
                            torch._foreach_add_(used, [p.grad for p in used], alpha=-float(lr))  # type: ignore[arg-type]
                for p in adapted:
                    p.grad = None
            del optimizer
            for p, g in zip(plist, query_acc):
                p.grad = g
            del query_acc, g  # sole owner: autograd then accumulates into .grad in place
            loss = loss_fn(model(t.x_query), t.y_query) / len(tasks)
            loss.backward(inputs=plist)
            total += float(loss.detach())
            del loss
            with torch.no_grad():
                torch._foreach_copy_(adapted, init)
        grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in zip(keys, plist)}
    finally:
        for p, g, flag in zip(plist, saved_grads, saved_flags):
            p.grad = g
            p.requires_grad_(flag)
    return MetaGradient(grads=grads, lr_grads=None, loss=total)


def _first_order_gradient_functional(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Task],
    names: Sequence[str],
    *,
    steps: int,
    lr: LR,
    opt: str,
    loss_fn: LossFn,
) -> MetaGradient:
    """:func:`_first_order_gradient` for parameter dicts that are not the module's own:
    leaf copies adapted in place through ``functional_call``."""
    p0 = {n: v.detach() for n, v in params.items()}
    keys = list(p0)
    total_g = [torch.zeros_like(v) for v in p0.values()]
    total = 0.0
    for t in tasks:
        fwd = _Forward(model, p0, names)
        fast = _inplace_adapt(
            fwd, p0, t.x_support, t.y_support, names, steps=steps, lr=float(lr), opt=opt, loss_fn=loss_fn
        )  # type: ignore[arg-type]
        leaves = [fast[n] if n in fast else p0[n].detach().requires_grad_(True) for n in keys]
        loss = loss_fn(functional_call(model, dict(zip(keys, leaves)), (t.x_query,)), t.y_query) / len(tasks)
        gs = torch.autograd.grad(loss, leaves, allow_unused=True)
        torch._foreach_add_(total_g, [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, gs)])
        total += float(loss.detach())
    return MetaGradient(grads=dict(zip(keys, total_g)), lr_grads=None, loss=total)


def adapted_query_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Task],
    *,
    steps: int,
    lr: LR,
    opt: str = "sgd",
    adapt_names: Sequence[str] | None = None,
    loss_fn: LossFn = seg_loss,
) -> float:
    """Mean query loss after the (first-order, graph-free) inner loop: the meta-validation loss."""
    names = list(adapt_names) if adapt_names is not None else list(params)
    p0 = {n: v.detach() for n, v in params.items()}
    total = 0.0
    for t in tasks:
        fast = inner_adapt(
            model,
            p0,
            t.x_support,
            t.y_support,
            steps=steps,
            lr=lr,
            opt=opt,
            first_order=True,
            adapt_names=names,
            loss_fn=loss_fn,
        )
        with torch.no_grad():
            total += float(loss_fn(functional_call(model, fast, (t.x_query,)), t.y_query)) / len(tasks)
    return total


def reptile_direction(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Task],
    *,
    steps: int,
    lr: float,
    opt: str = "sgd",
    adapt_names: Sequence[str] | None = None,
    loss_fn: LossFn = seg_loss,
) -> MetaGradient:
    """Reptile's ``mean_tasks(params - adapted)`` (Nichol et al. 2018); the interpolation
    update is ``params - eps * direction``. Each task adapts on its support and query slices
    together (Reptile has no query split); ``loss`` is the mean loss after adaptation."""
    if not tasks:
        raise ValueError("reptile_direction needs at least one task")
    p0 = {n: v.detach() for n, v in params.items()}
    keys = list(p0)
    direction = [torch.zeros_like(v) for v in p0.values()]
    total = 0.0
    for t in tasks:
        x = torch.cat([t.x_support, t.x_query])
        y = torch.cat([t.y_support, t.y_query])
        fast = inner_adapt(
            model, p0, x, y, steps=steps, lr=lr, opt=opt, first_order=True, adapt_names=adapt_names, loss_fn=loss_fn
        )
        with torch.no_grad():
            diff = torch._foreach_sub([p0[n] for n in keys], [fast[n] for n in keys])
            torch._foreach_add_(direction, diff, alpha=1.0 / len(tasks))
            total += float(loss_fn(functional_call(model, fast, (x,)), y)) / len(tasks)
    return MetaGradient(grads=dict(zip(keys, direction)), lr_grads=None, loss=total)


def accumulate_grads(targets: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    """Add ``grads`` into ``targets[name].grad`` (parameters without a gradient get zeros)."""
    for name, p in targets.items():
        g = grads.get(name)
        if g is None:
            g = torch.zeros_like(p)
        g = g.detach().to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
