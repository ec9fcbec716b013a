"""The one meta-learning engine: MAML-family inner/outer loops on ``torch.func``.

Everything is a function of a plain ``nn.Module`` and a dict of parameter tensors, run
through :func:`torch.func.functional_call`; inner-loop gradients come from
:func:`torch.func.grad_and_value`, the outer (meta) gradient from ``torch.autograd.grad``
over them (second order when the inner gradients stay in the graph — the functorch MAML
recipe; an outer ``torch.func.grad`` was measured at ~1.6x the peak memory), and,
optionally, :func:`torch.func.vmap` vectorizes the per-task loss over a meta-batch. The backbone stays an ordinary module: no ``weight.fast`` attributes, no
monkey-patched layers, no BatchNorm running statistics (use GroupNorm, the U-Net default).

Function form (learn2learn's ``maml_update`` spirit)::

    fast = inner_adapt(model, params, x_s, y_s, steps=5, lr=0.05)          # adapted params
    out = meta_gradient(model, params, tasks, steps=5, lr=0.05)             # MetaGradient
    out.grads["head.weight"], out.lr_grads, out.loss

Class form: :class:`MetaModel` holds the initialization (and Meta-SGD learning rates) as
trainable tensors and offers ``adapt`` / ``meta_backward`` / ``parameters``.

Variants, all from the same two functions:

* ``maml``    -- ``first_order=False``: the outer gradient flows through every inner step
  (inner steps by ``torch.func.grad``, the outer gradient by ``torch.autograd.grad``
  through them, so Hessian-vector products are included).
* ``fomaml``  -- ``first_order=True``: inner gradients are detached, so the outer gradient
  is the query gradient at the adapted parameters (and the lr gradient, for Meta-SGD,
  ``-sum_t g_t * dL_q/dphi``).
* ``anil``    -- ``adapt_names`` restricts the inner loop to a subset (the head); the outer
  gradient still reaches every parameter (through the features the head reads).
* ``metasgd`` -- ``lr`` is a dict of per-parameter (element-wise) learning-rate tensors,
  and :func:`meta_gradient` also returns their gradient (``lr_grads``).
* ``reptile`` -- :func:`reptile_direction`: the mean of ``params - adapted`` over tasks, a
  pseudo-gradient for any optimizer.

Modes: ``mode="loop"`` differentiates one task at a time and sums (peak memory of one
task); ``mode="vmap"`` vectorizes the per-task loss over the meta-batch (needs equal-sized
tasks; peak memory grows with the meta-batch). On a 2-core CPU vmap was measured slower
per meta-step and ~3x the memory (benchmarks/README.md), so the default is ``loop``;
measure on your device before switching.

The engine never imports ``higher`` or ``learn2learn`` (tests cross-check against them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from fewshot_transfer.losses import seg_loss

LossFn = Callable[[Tensor, Tensor], Tensor]
Params = dict[str, Tensor]
#: A scalar inner learning rate, or one tensor per adapted parameter (Meta-SGD).
LR = float | Mapping[str, Tensor]
MODES = ("loop", "vmap")


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
    """The module's parameters as a name -> tensor dict (detached: safe to pass to ``grad``)."""
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


def sgd_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: LR) -> Params:
    """One SGD step ``p - lr * g`` on the parameters that have a gradient (the others pass through).

    The function form of an inner-loop step (learn2learn's ``maml_update``): differentiable
    in ``params``, ``grads`` and, when ``lr`` is a dict of tensors, in ``lr``.
    """
    out = dict(params)
    for name, g in grads.items():
        step = lr[name] if isinstance(lr, Mapping) else lr
        out[name] = params[name] - step * g
    return out


def _loss_at(model: nn.Module, loss_fn: LossFn) -> Callable[[Params, Params, Tensor, Tensor], Tensor]:
    def loss(adapted: Params, frozen: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, {**frozen, **adapted}, (x,)), y)

    return loss


def inner_adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: LR,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    loss_fn: LossFn = seg_loss,
) -> Params:
    """``steps`` SGD steps on ``loss_fn(model(x), y)``, returning the adapted parameter dict.

    Only ``adapt_names`` (default: all) change; the rest are passed through untouched. With
    ``first_order=False`` the result stays differentiable through every step (call it inside
    ``torch.func.grad`` or with parameters that require grad). With ``first_order=True`` each
    inner gradient is computed on detached parameters, so the result depends on ``params``
    (and a Meta-SGD ``lr``) only through the linear updates ``p - lr * g``.
    """
    if steps < 0:
        raise ValueError(f"inner steps must be >= 0, got {steps}")
    names = list(adapt_names) if adapt_names is not None else list(params)
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"adapt_names not among the parameters: {missing[:5]}")
    if isinstance(lr, Mapping):
        absent = [n for n in names if n not in lr]
        if absent:
            raise KeyError(f"per-parameter lr missing for {absent[:5]}")
    fast = dict(params)
    for _ in range(steps):
        fast, _ = sgd_step(model, fast, x, y, lr=lr, first_order=first_order, adapt_names=names, loss_fn=loss_fn)
    return fast


def sgd_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    lr: LR,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    loss_fn: LossFn = seg_loss,
) -> tuple[Params, Tensor]:
    """One inner step: ``(adapted params, loss before the step)`` (see :func:`inner_adapt`)."""
    names = list(adapt_names) if adapt_names is not None else list(params)
    adapt = set(names)
    sub = {n: params[n] for n in names}
    frozen = {n: v for n, v in params.items() if n not in adapt}
    if first_order:
        sub = {n: v.detach() for n, v in sub.items()}
        frozen = {n: v.detach() for n, v in frozen.items()}
    g, value = grad_and_value(_loss_at(model, loss_fn))(sub, frozen, x, y)
    return sgd_update(params, g, lr), value


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
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    loss_fn: LossFn = seg_loss,
) -> Tensor:
    """Query loss after adapting on the support set: the MAML outer objective of one task."""
    fast = inner_adapt(
        model, params, x_support, y_support, steps=steps, lr=lr,
        first_order=first_order, adapt_names=adapt_names, loss_fn=loss_fn,
    )
    return loss_fn(functional_call(model, fast, (x_query,)), y_query)


def stack_tasks(tasks: Sequence[Task]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Tasks as four ``[T, ...]`` tensors (for vmap); all tasks must have equal shapes."""
    shapes = {(t.x_support.shape, t.x_query.shape) for t in tasks}
    if len(shapes) != 1:
        raise ValueError(f"vmap mode needs equal-sized tasks, got shapes {sorted(map(str, shapes))}; use mode='loop'")
    return tuple(torch.stack([getattr(t, f) for t in tasks]) for f in ("x_support", "y_support", "x_query", "y_query"))  # type: ignore[return-value]


def meta_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Task],
    *,
    steps: int,
    lr: LR,
    first_order: bool = False,
    adapt_names: Sequence[str] | None = None,
    mode: str = "loop",
    learn_lr: bool | None = None,
    loss_fn: LossFn = seg_loss,
) -> MetaGradient:
    """Gradient of the mean post-adaptation query loss over ``tasks`` w.r.t. the init.

    ``learn_lr`` (default: whether ``lr`` is a dict) also differentiates w.r.t. the
    per-parameter learning rates (Meta-SGD). Returned tensors carry no autograd graph.
    """
    if not tasks:
        raise ValueError("meta_gradient needs at least one task")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    learn_lr = isinstance(lr, Mapping) if learn_lr is None else learn_lr
    if learn_lr and not isinstance(lr, Mapping):
        raise ValueError("learn_lr=True needs per-parameter lr tensors (see init_lrs)")
    if first_order and not learn_lr and mode == "loop":
        return _first_order_gradient(model, params, tasks, steps=steps, lr=lr, adapt_names=adapt_names, loss_fn=loss_fn)
    # Leaves for the outer differentiation: torch.autograd over the inner torch.func.grad
    # (the functorch MAML recipe). An outer torch.func.grad gives the same numbers but was
    # measured at ~1.6x the peak memory of higher for second order (benchmarks/README.md).
    p0 = {n: v.detach().requires_grad_(True) for n, v in params.items()}
    lr0: LR = (
        {n: v.detach().requires_grad_(learn_lr) for n, v in lr.items()} if isinstance(lr, Mapping) else float(lr)
    )
    inputs = list(p0.values()) + (list(lr0.values()) if learn_lr and isinstance(lr0, dict) else [])
    opts = {"steps": steps, "first_order": first_order, "adapt_names": adapt_names, "loss_fn": loss_fn}

    def one(p: Params, r: LR, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        return task_query_loss(model, p, r, xs, ys, xq, yq, **opts)

    def outer_grad(loss: Tensor) -> list[Tensor]:
        gs = torch.autograd.grad(loss, inputs, allow_unused=True)
        return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gs)]

    n = len(tasks)
    if mode == "vmap":
        batch = stack_tasks(tasks)
        loss = vmap(one, in_dims=(None, None, 0, 0, 0, 0), randomness="same")(p0, lr0, *batch).mean()
        flat = outer_grad(loss)
        total = float(loss.detach())
    else:
        flat, total = None, 0.0
        for t in tasks:
            loss = one(p0, lr0, t.x_support, t.y_support, t.x_query, t.y_query) / n
            gt = outer_grad(loss)
            total += float(loss.detach())
            flat = gt if flat is None else [a + b for a, b in zip(flat, gt)]
            del loss
    names = list(p0)
    g_params = dict(zip(names, flat[: len(names)]))
    lr_grads = dict(zip(list(lr0), flat[len(names):])) if learn_lr and isinstance(lr0, dict) else None
    return MetaGradient(grads=g_params, lr_grads=lr_grads, loss=total)


def _first_order_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Task],
    *,
    steps: int,
    lr: LR,
    adapt_names: Sequence[str] | None,
    loss_fn: LossFn,
) -> MetaGradient:
    """First order with a fixed lr: adapted = init - sum(lr * g_t) with g_t detached, so the
    meta-gradient is exactly the query gradient at the adapted weights. Computed without
    building any graph through the inner steps (same numbers as the general path)."""
    p0 = {n: v.detach() for n, v in params.items()}
    total_g = {n: torch.zeros_like(v) for n, v in p0.items()}
    query = _loss_at(model, loss_fn)
    total = 0.0
    for t in tasks:
        fast = inner_adapt(model, p0, t.x_support, t.y_support, steps=steps, lr=lr, first_order=True,
                           adapt_names=adapt_names, loss_fn=loss_fn)
        fast = {n: v.detach() for n, v in fast.items()}
        g, value = grad_and_value(query)(fast, {}, t.x_query, t.y_query)
        for n in total_g:
            total_g[n] += g[n] / len(tasks)
        total += float(value) / len(tasks)
    return MetaGradient(grads=total_g, lr_grads=None, loss=total)


def reptile_direction(
    model: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence[Task],
    *,
    steps: int,
    lr: LR,
    adapt_names: Sequence[str] | None = None,
    loss_fn: LossFn = seg_loss,
) -> MetaGradient:
    """Reptile's pseudo-gradient ``mean_tasks(params - adapted)`` (Nichol et al. 2018).

    Each task adapts on its support and query slices together (Reptile has no query split);
    feeding the result to an optimizer as ``.grad`` moves the init toward the adapted
    weights. ``loss`` is the mean loss after adaptation on the task's own slices.
    """
    if not tasks:
        raise ValueError("reptile_direction needs at least one task")
    p0 = {n: v.detach() for n, v in params.items()}
    direction = {n: torch.zeros_like(v) for n, v in p0.items()}
    total = 0.0
    for t in tasks:
        x = torch.cat([t.x_support, t.x_query])
        y = torch.cat([t.y_support, t.y_query])
        fast = inner_adapt(model, p0, x, y, steps=steps, lr=lr, first_order=True, adapt_names=adapt_names, loss_fn=loss_fn)
        with torch.no_grad():
            for n in direction:
                direction[n] += (p0[n] - fast[n].detach()) / len(tasks)
            total += float(loss_fn(functional_call(model, fast, (x,)), y)) / len(tasks)
    return MetaGradient(grads=direction, lr_grads=None, loss=total)


class MetaModel:
    """Class form: a module plus its meta-learned init (and, for Meta-SGD, learning rates).

    The wrapped module's own ``nn.Parameter`` objects *are* the initialization, so a normal
    optimizer over :meth:`parameters` meta-trains them; :meth:`adapt` returns fast weights
    (a dict) and :meth:`forward` evaluates the module at any parameter dict::

        meta = MetaModel(unet, lr=0.05, steps=1, first_order=False)
        opt = torch.optim.Adam(meta.parameters(), 1e-3)
        loss = meta.meta_backward(tasks)   # fills .grad; then
        opt.step(); opt.zero_grad()
        fast = meta.adapt(x_shots, y_shots, steps=20)
        logits = meta.forward(x, fast)
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float,
        *,
        steps: int = 1,
        first_order: bool = False,
        adapt_names: Sequence[str] | None = None,
        learn_lr: bool = False,
        mode: str = "loop",
        loss_fn: LossFn = seg_loss,
    ) -> None:
        self.model = model
        self.steps = int(steps)
        self.first_order = bool(first_order)
        self.adapt_names = list(adapt_names) if adapt_names is not None else None
        self.mode = mode
        self.loss_fn = loss_fn
        self.learn_lr = bool(learn_lr)
        self.lr: LR = float(lr)
        if learn_lr:
            lrs = init_lrs(module_params(model), lr, self.adapt_names)
            self.lr = {n: v.requires_grad_(True) for n, v in lrs.items()}

    def parameters(self) -> list[Tensor]:
        """The init's parameters, then the learned learning rates (if any)."""
        out = list(self.model.parameters())
        if isinstance(self.lr, dict):
            out += list(self.lr.values())
        return out

    def forward(self, x: Tensor, params: Mapping[str, Tensor] | None = None) -> Tensor:
        return functional_call(self.model, dict(params) if params is not None else module_params(self.model, detach=False), (x,))

    __call__ = forward

    def adapt(self, x: Tensor, y: Tensor, steps: int | None = None) -> Params:
        """Fast weights after ``steps`` (default: the training inner steps) SGD steps on (x, y)."""
        lr = {n: v.detach() for n, v in self.lr.items()} if isinstance(self.lr, dict) else self.lr
        fast = inner_adapt(
            self.model, module_params(self.model), x, y, steps=self.steps if steps is None else int(steps),
            lr=lr, first_order=True, adapt_names=self.adapt_names, loss_fn=self.loss_fn,
        )
        return {n: v.detach() for n, v in fast.items()}

    def meta_backward(self, tasks: Sequence[Task]) -> float:
        """Accumulate the meta-gradient of ``tasks`` into ``.grad``; returns the mean query loss."""
        out = meta_gradient(
            self.model, module_params(self.model), tasks, steps=self.steps, lr=self.lr,
            first_order=self.first_order, adapt_names=self.adapt_names, mode=self.mode,
            learn_lr=self.learn_lr, loss_fn=self.loss_fn,
        )
        accumulate_grads(dict(self.model.named_parameters()), out.grads)
        if out.lr_grads is not None and isinstance(self.lr, dict):
            accumulate_grads(self.lr, out.lr_grads)
        return out.loss


def accumulate_grads(targets: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    """Add ``grads`` into ``targets[name].grad`` (parameters without a gradient get zeros)."""
    for name, p in targets.items():
        g = grads.get(name)
        if g is None:
            g = torch.zeros_like(p)
        g = g.detach().to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
