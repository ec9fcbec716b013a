"""Cross-checks of the engine's meta-gradients against higher, learn2learn and finite differences.

Second-order MAML, first-order MAML, ANIL (head-only inner loop, body features computed
once) and Meta-SGD (element-wise learned rates) are each compared with ``higher`` in
float64; the differentiable Adam inner loop is checked against central finite differences
and, first order, against ``torch.optim.Adam`` itself. The engine never imports these
libraries; only this test does. ``learn2learn`` does not build on Python 3.11, so its
check is skipped there with the reason.
"""

from __future__ import annotations

import sys

import pytest
import torch

from fewshot_transfer.losses import seg_loss
from fewshot_transfer.meta.engine import (
    Task,
    inner_adapt,
    meta_gradient,
    module_params,
    task_query_loss,
)
from fewshot_transfer.models import UNet

INNER_LR, STEPS = 0.3, 2
HEAD = ["head.weight", "head.bias"]


def _setup(n_tasks: int = 2):
    torch.manual_seed(0)
    net = UNet(base=2, depth=3, groups=2).double()
    gen = torch.Generator().manual_seed(1)
    tasks = []
    for _ in range(n_tasks):
        x = torch.rand(4, 2, 1, 16, 16, generator=gen, dtype=torch.float64)
        y = (torch.rand(4, 2, 1, 16, 16, generator=gen, dtype=torch.float64) > 0.8).double()
        x = x + 0.5 * y
        tasks.append(Task(x[0], y[0], x[1], y[1]))
    return net, tasks


def _engine(net, tasks, first_order=False):
    return meta_gradient(net, module_params(net), tasks, steps=STEPS, lr=INNER_LR, first_order=first_order)


def _assert_close(engine_grads: dict, reference: dict) -> None:
    for name, g in engine_grads.items():
        ref = reference[name]
        assert torch.allclose(g, ref, rtol=1e-9, atol=1e-12), (name, float((g - ref).abs().max()))


def _higher():
    return pytest.importorskip("higher", reason="higher is in the `test` extra: pip install -e '.[test]'")


def _grads_of(net) -> dict:
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in net.named_parameters()}


def test_maml_matches_higher():
    higher = _higher()
    net, tasks = _setup()
    ours = _engine(net, tasks)
    net.zero_grad()
    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    total = 0.0
    for t in tasks:
        with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(STEPS):
                diffopt.step(seg_loss(fnet(t.x_support), t.y_support))
            q = seg_loss(fnet(t.x_query), t.y_query) / len(tasks)
            q.backward()
            total += float(q.detach())
    ref = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in net.named_parameters()}
    _assert_close(ours.grads, ref)
    assert ours.loss == pytest.approx(total, rel=1e-12)
    # and the second-order term is really there: first order differs from higher's answer
    fo = _engine(net, tasks, first_order=True)
    assert not torch.allclose(fo.grads["encoders.0.0.weight"], ref["encoders.0.0.weight"], rtol=1e-3)


def test_first_order_maml_matches_higher():
    """First order: the query gradient at higher's (untracked) adapted weights, credited to the init."""
    higher = _higher()
    net, tasks = _setup()
    ours = _engine(net, tasks, first_order=True)
    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    ref = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    total = 0.0
    for t in tasks:
        with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False, track_higher_grads=False) as (
            fnet,
            diffopt,
        ):
            for _ in range(STEPS):
                diffopt.step(seg_loss(fnet(t.x_support), t.y_support))
            q = seg_loss(fnet(t.x_query), t.y_query) / len(tasks)
            grads = torch.autograd.grad(q, list(fnet.parameters()), allow_unused=True)
            for (n, _), g in zip(net.named_parameters(), grads):
                if g is not None:
                    ref[n] += g
            total += float(q.detach())
    _assert_close(ours.grads, ref)
    assert ours.loss == pytest.approx(total, rel=1e-12)


def test_anil_matches_higher():
    """Head-only inner loop (the engine re-applies only the head to features computed once);
    second order, so the outer gradient reaches the body through the features."""
    higher = _higher()
    net, tasks = _setup()
    ours = meta_gradient(net, module_params(net), tasks, steps=STEPS, lr=INNER_LR, adapt_names=HEAD)
    net.zero_grad()
    inner_opt = torch.optim.SGD(net.head.parameters(), lr=INNER_LR)
    for t in tasks:
        with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(STEPS):
                diffopt.step(seg_loss(fnet(t.x_support), t.y_support))
            (seg_loss(fnet(t.x_query), t.y_query) / len(tasks)).backward()
    ref = _grads_of(net)
    _assert_close(ours.grads, ref)
    assert float(ref["encoders.0.0.weight"].abs().max()) > 0  # the body does get a meta-gradient


def test_metasgd_matches_higher():
    """Element-wise learned rates: gradients w.r.t. the init *and* the rates."""
    higher = _higher()
    net, tasks = _setup()
    gen = torch.Generator().manual_seed(5)
    params = module_params(net)
    rates = {n: INNER_LR * (0.5 + torch.rand(v.shape, generator=gen, dtype=v.dtype)) for n, v in params.items()}
    ours = meta_gradient(net, params, tasks, steps=STEPS, lr=rates)
    net.zero_grad()
    alphas = [rates[n].clone().requires_grad_(True) for n, _ in net.named_parameters()]
    inner_opt = torch.optim.SGD(net.parameters(), lr=1.0)
    for t in tasks:
        with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(STEPS):
                diffopt.step(
                    seg_loss(fnet(t.x_support), t.y_support),
                    grad_callback=lambda gs: [None if g is None else a * g for a, g in zip(alphas, gs)],
                )
            (seg_loss(fnet(t.x_query), t.y_query) / len(tasks)).backward()
    _assert_close(ours.grads, _grads_of(net))
    _assert_close(
        ours.lr_grads,
        {n: torch.zeros_like(a) if a.grad is None else a.grad for (n, _), a in zip(net.named_parameters(), alphas)},
    )
    assert float(ours.lr_grads["head.weight"].abs().max()) > 0


def test_first_order_adam_inner_loop_is_torch_adam():
    """The first-order inner loop with ``opt="adam"`` is torch.optim.Adam on the module."""
    net, tasks = _setup(n_tasks=1)
    t = tasks[0]
    fast = inner_adapt(
        net, module_params(net), t.x_support, t.y_support, steps=3, lr=1e-2, opt="adam", first_order=True
    )
    ref = UNet(base=2, depth=3, groups=2).double()
    ref.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        seg_loss(ref(t.x_support), t.y_support).backward()
        opt.step()
    _assert_close(fast, dict(ref.named_parameters()))


def test_maml_matches_learn2learn():
    why = (
        "learn2learn does not build on Python >= 3.11 (its stale Cython sources fail)"
        if sys.version_info >= (3, 11)
        else "learn2learn is optional and not installed (pip install learn2learn)"
    )
    l2l = pytest.importorskip("learn2learn", reason=f"{why}; the higher cross-check covers the same meta-gradient")
    net, tasks = _setup()
    ours = _engine(net, tasks)
    maml = l2l.algorithms.MAML(net, lr=INNER_LR, first_order=False, allow_unused=True)
    net.zero_grad()
    for t in tasks:
        learner = maml.clone()
        for _ in range(STEPS):
            learner.adapt(seg_loss(learner(t.x_support), t.y_support))
        (seg_loss(learner(t.x_query), t.y_query) / len(tasks)).backward()
    ref = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in net.named_parameters()}
    _assert_close(ours.grads, ref)


def smooth_net() -> torch.nn.Module:
    """A tiny conv net with smooth activations: ReLU/max-pool kinks in the U-Net make central
    differences of a *multi-step* adapted loss unreliable, so the FD check uses this net."""
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.GroupNorm(2, 4),
        torch.nn.Tanh(),
        torch.nn.Conv2d(4, 4, 3, padding=1),
        torch.nn.Softplus(),
        torch.nn.Conv2d(4, 1, 1),
    ).double()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_second_order_term_matches_finite_difference(opt):
    """<meta-gradient, v> equals the central difference of the post-adaptation query loss
    along a random direction v (SGD and the differentiable Adam inner loop); the
    first-order gradient misses by much more."""
    _, tasks = _setup(n_tasks=1)
    net = smooth_net()
    t = tasks[0]
    p0 = module_params(net)
    lr = INNER_LR if opt == "sgd" else 0.02
    so = meta_gradient(net, p0, tasks, steps=STEPS, lr=lr, opt=opt).grads
    fo = meta_gradient(net, p0, tasks, steps=STEPS, lr=lr, opt=opt, first_order=True).grads
    gen = torch.Generator().manual_seed(7)
    v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in p0.items()}

    def f(eps: float) -> float:
        p = {n: p0[n] + eps * v[n] for n in p0}
        return float(
            task_query_loss(net, p, lr, t.x_support, t.y_support, t.x_query, t.y_query, steps=STEPS, opt=opt).detach()
        )

    eps = 1e-5
    fd = (f(eps) - f(-eps)) / (2 * eps)
    dot_so = sum(float((so[n] * v[n]).sum()) for n in p0)
    dot_fo = sum(float((fo[n] * v[n]).sum()) for n in p0)
    err_so, err_fo = abs(dot_so - fd), abs(dot_fo - fd)
    assert err_so <= 1e-6 * max(1.0, abs(fd)), (dot_so, fd)
    assert err_fo > 100 * err_so, (dot_fo, dot_so, fd)
