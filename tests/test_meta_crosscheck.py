"""Cross-checks of the engine's MAML meta-gradient against higher, learn2learn and finite differences.

The engine never imports these libraries; only this test does. ``higher`` comes with the
``test`` extra, so its check always runs in CI; ``learn2learn`` does not build on Python
3.11, so its check is skipped there with the reason.
"""

from __future__ import annotations

import sys

import pytest
import torch

from fewshot_transfer.losses import seg_loss
from fewshot_transfer.meta.engine import (
    Task,
    meta_gradient,
    module_params,
    task_query_loss,
)
from fewshot_transfer.models import UNet

INNER_LR, STEPS = 0.3, 2



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


def test_maml_matches_higher():
    higher = pytest.importorskip("higher", reason="higher is in the `test` extra: pip install -e '.[test]'")
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
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.Tanh(),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Softplus(), torch.nn.Conv2d(4, 1, 1),
    ).double()


def test_second_order_term_matches_finite_difference():
    """<meta-gradient, v> equals the central difference of the post-adaptation query loss
    along a random direction v; the first-order gradient misses by much more."""
    _, tasks = _setup(n_tasks=1)
    net = smooth_net()
    t = tasks[0]
    p0 = module_params(net)
    so = _engine(net, tasks).grads
    fo = _engine(net, tasks, first_order=True).grads
    gen = torch.Generator().manual_seed(7)
    v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in p0.items()}

    def f(eps: float) -> float:
        p = {n: p0[n] + eps * v[n] for n in p0}
        return float(task_query_loss(net, p, INNER_LR, t.x_support, t.y_support, t.x_query, t.y_query, steps=STEPS))

    eps = 1e-5
    fd = (f(eps) - f(-eps)) / (2 * eps)
    dot_so = sum(float((so[n] * v[n]).sum()) for n in p0)
    dot_fo = sum(float((fo[n] * v[n]).sum()) for n in p0)
    err_so, err_fo = abs(dot_so - fd), abs(dot_fo - fd)
    assert err_so <= 1e-6 * max(1.0, abs(fd)), (dot_so, fd)
    assert err_fo > 100 * err_so, (dot_fo, dot_so, fd)
