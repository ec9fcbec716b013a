"""The torch.func meta-learning engine on tiny nets and synthetic tasks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fewshot_transfer.losses import seg_loss
from fewshot_transfer.meta.engine import (
    Task,
    accumulate_grads,
    adapted_query_loss,
    init_lrs,
    inner_adapt,
    meta_gradient,
    module_params,
    names_matching,
    reptile_direction,
    sgd_update,
    task_query_loss,
)
from fewshot_transfer.models import UNet


def tiny_unet(seed: int = 0, dtype=torch.float32) -> UNet:
    torch.manual_seed(seed)
    return UNet(base=2, depth=3, groups=2).to(dtype)


def lesion_task(gen: torch.Generator, intensity: float, n: int = 4, size: int = 16, dtype=torch.float32) -> tuple:
    """Slices with one bright square lesion whose intensity depends on the task."""
    x = 0.2 * torch.rand(n, 1, size, size, generator=gen, dtype=dtype)
    y = torch.zeros(n, 1, size, size, dtype=dtype)
    for i in range(n):
        r, c = torch.randint(2, size - 6, (2,), generator=gen).tolist()
        y[i, 0, r : r + 4, c : c + 4] = 1
    x = x + intensity * y
    return x, y


def make_tasks(n_tasks: int, seed: int = 0, dtype=torch.float32, size: int = 16) -> list[Task]:
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(n_tasks):
        intensity = float(0.3 + 0.6 * torch.rand(1, generator=gen))
        xs, ys = lesion_task(gen, intensity, dtype=dtype, size=size)
        xq, yq = lesion_task(gen, intensity, dtype=dtype, size=size)
        tasks.append(Task(xs, ys, xq, yq))
    return tasks


def test_inner_loop_lowers_support_loss():
    net = tiny_unet()
    task = make_tasks(1)[0]
    p0 = module_params(net)
    with torch.no_grad():
        before = float(seg_loss(net(task.x_support), task.y_support))
    fast = inner_adapt(net, p0, task.x_support, task.y_support, steps=10, lr=0.5, first_order=True)
    after = task_query_loss(
        net, fast, 0.5, task.x_support, task.y_support, task.x_support, task.y_support, steps=0
    ).item()
    assert after < before - 0.01
    # the init is untouched, the adapted dict has every parameter
    assert set(fast) == set(p0)
    assert torch.equal(p0["head.weight"], module_params(net)["head.weight"])


def test_adapt_names_freeze_everything_else():
    net = tiny_unet()
    task = make_tasks(1)[0]
    p0 = module_params(net)
    head = names_matching(net, ["head."])
    assert head == ["head.weight", "head.bias"]
    fast = inner_adapt(net, p0, task.x_support, task.y_support, steps=2, lr=0.5, adapt_names=head)
    for n in p0:
        assert torch.equal(fast[n], p0[n]) == (n not in head), n


def test_zero_inner_steps_is_plain_gradient():
    net = tiny_unet()
    tasks = make_tasks(2)
    out = meta_gradient(net, module_params(net), tasks, steps=0, lr=0.1)
    net.zero_grad()
    loss = sum(seg_loss(net(t.x_query), t.y_query) for t in tasks) / 2
    loss.backward()
    for n, p in net.named_parameters():
        exp = p.grad if p.grad is not None else torch.zeros_like(p)
        assert torch.allclose(out.grads[n], exp, atol=1e-6), n
    assert out.loss == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("head_only", [False, True])
def test_in_place_first_order_path_equals_general_path(opt, head_only):
    """The graph-free first-order path (in-place foreach updates; ANIL: features once per task)
    gives the general first-order path's numbers (per-parameter rates equal to the scalar)."""
    net = tiny_unet(dtype=torch.float64)
    tasks = make_tasks(3, dtype=torch.float64)
    p0 = module_params(net)
    names = ["head.weight", "head.bias"] if head_only else None
    fast = meta_gradient(net, p0, tasks, steps=2, lr=0.05, opt=opt, first_order=True, adapt_names=names)
    rates = init_lrs(p0, 0.05, names)
    general = meta_gradient(
        net, p0, tasks, steps=2, lr=rates, opt=opt, first_order=True, adapt_names=names, learn_lr=False
    )
    assert fast.loss == pytest.approx(general.loss, rel=1e-10)
    for n in p0:
        assert torch.allclose(fast.grads[n], general.grads[n], atol=1e-12, rtol=1e-9), n


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("head_only", [False, True])
@pytest.mark.parametrize("own", [True, False])
def test_first_order_on_module_parameters_is_bit_identical_and_restores_the_module(opt, head_only, own):
    """meta_gradient on the module's own parameters (adapted in place on the real module)
    gives bit-for-bit the functional route's gradients and leaves weights, .grad and
    requires_grad as they were."""
    from fewshot_transfer.meta.engine import _first_order_gradient_functional

    torch.set_num_threads(1)
    net = tiny_unet()
    tasks = make_tasks(3)
    names = ["head.weight", "head.bias"] if head_only else [n for n, _ in net.named_parameters()]
    marker = torch.full_like(net.head.bias, 7.0)
    net.head.bias.grad = marker
    frozen = next(iter(net.parameters()))
    frozen.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    params = dict(net.named_parameters()) if own else module_params(net)
    fast = meta_gradient(net, params, tasks, steps=3, lr=0.05, opt=opt, first_order=True, adapt_names=names)
    ref = _first_order_gradient_functional(
        net, module_params(net), tasks, names, steps=3, lr=0.05, opt=opt, loss_fn=seg_loss
    )
    assert fast.loss == ref.loss
    for n in ref.grads:
        assert torch.equal(fast.grads[n], ref.grads[n]), n
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]), n
    assert net.head.bias.grad is marker
    assert not frozen.requires_grad
    assert all(p.grad is None for p in net.parameters() if p is not net.head.bias)


def test_first_order_is_query_gradient_at_adapted_params():
    net = tiny_unet(dtype=torch.float64)
    task = make_tasks(1, dtype=torch.float64)[0]
    p0 = module_params(net)
    out = meta_gradient(net, p0, [task], steps=2, lr=0.1, first_order=True)
    fast = {
        n: v.detach().requires_grad_(True)
        for n, v in inner_adapt(net, p0, task.x_support, task.y_support, steps=2, lr=0.1, first_order=True).items()
    }
    loss = task_query_loss(net, fast, 0.1, task.x_query, task.y_query, task.x_query, task.y_query, steps=0)
    g = torch.autograd.grad(loss, list(fast.values()), allow_unused=True)
    for (n, v), gi in zip(fast.items(), g):
        exp = gi if gi is not None else torch.zeros_like(v)
        assert torch.allclose(out.grads[n], exp, atol=1e-12), n


def test_second_order_differs_from_first_order_and_anil_reaches_body():
    net = tiny_unet(dtype=torch.float64)
    tasks = make_tasks(2, dtype=torch.float64)
    p0 = module_params(net)
    so = meta_gradient(net, p0, tasks, steps=1, lr=0.3)
    fo = meta_gradient(net, p0, tasks, steps=1, lr=0.3, first_order=True)
    assert not torch.allclose(so.grads["encoders.0.0.weight"], fo.grads["encoders.0.0.weight"])
    anil = meta_gradient(net, p0, tasks, steps=1, lr=0.3, adapt_names=["head.weight", "head.bias"])
    assert float(anil.grads["encoders.0.0.weight"].abs().sum()) > 0  # outer loop trains the body too


def test_metasgd_lr_gradient_matches_finite_difference():
    net = tiny_unet(dtype=torch.float64)
    task = make_tasks(1, dtype=torch.float64)[0]
    p0 = module_params(net)
    lrs = init_lrs(p0, 0.2)
    out = meta_gradient(net, p0, [task], steps=1, lr=lrs)
    name, eps = "head.bias", 1e-6

    def f(delta):
        lr = {**lrs, name: lrs[name] + delta}
        return task_query_loss(net, p0, lr, task.x_support, task.y_support, task.x_query, task.y_query, steps=1).item()

    e = torch.zeros_like(lrs[name])
    e[0] = eps
    fd = (f(e) - f(-e)) / (2 * eps)
    assert out.lr_grads[name][0].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_reptile_direction_points_from_adapted_to_init():
    net = tiny_unet()
    tasks = make_tasks(2)
    p0 = module_params(net)
    out = reptile_direction(net, p0, tasks, steps=3, lr=0.2)
    exp = {n: torch.zeros_like(v) for n, v in p0.items()}
    for t in tasks:
        fast = inner_adapt(
            net,
            p0,
            torch.cat([t.x_support, t.x_query]),
            torch.cat([t.y_support, t.y_query]),
            steps=3,
            lr=0.2,
            first_order=True,
        )
        for n in exp:
            exp[n] += (p0[n] - fast[n]) / 2
    for n in p0:
        assert torch.allclose(out.grads[n], exp[n], atol=1e-6), n


def test_sgd_update_and_errors():
    p = {"a": torch.ones(2), "b": torch.ones(2)}
    out = sgd_update(p, {"a": torch.full((2,), 2.0)}, 0.5)
    assert torch.equal(out["a"], torch.zeros(2)) and out["b"] is p["b"]
    net = tiny_unet()
    t = make_tasks(1)[0]
    with pytest.raises(KeyError, match="adapt_names"):
        inner_adapt(net, module_params(net), t.x_support, t.y_support, steps=1, lr=0.1, adapt_names=["nope"])
    with pytest.raises(ValueError, match="optimizer"):
        meta_gradient(net, module_params(net), [t], steps=1, lr=0.1, opt="lbfgs")
    with pytest.raises(ValueError, match="learn_lr"):
        meta_gradient(net, module_params(net), [t], steps=1, lr=0.1, learn_lr=True)


def test_meta_training_beats_initial_model_after_adaptation():
    """On a task family (lesion intensity varies per task), a few second-order MAML steps
    lower the post-adaptation query loss on *held-out* tasks below that of the initial model."""
    torch.manual_seed(0)
    net = tiny_unet(seed=1)
    init = {n: v.clone() for n, v in module_params(net).items()}
    held_out = make_tasks(6, seed=123)
    inner_lr, steps = 0.3, 1
    before = adapted_query_loss(net, init, held_out, steps=steps, lr=inner_lr)
    params = dict(net.named_parameters())
    opt = torch.optim.Adam(params.values(), lr=0.02)
    for it in range(10):
        opt.zero_grad()
        accumulate_grads(
            params,
            meta_gradient(net, module_params(net), make_tasks(3, seed=1000 + it), steps=steps, lr=inner_lr).grads,
        )
        opt.step()
    after = adapted_query_loss(net, module_params(net), held_out, steps=steps, lr=inner_lr)
    assert after < before - 0.1, (before, after)
    t = held_out[0]
    fast = inner_adapt(net, module_params(net), t.x_support, t.y_support, steps=steps, lr=inner_lr, first_order=True)
    with torch.no_grad():
        manual = seg_loss(functional_call(net, fast, (t.x_query,)), t.y_query)
    assert adapted_query_loss(net, module_params(net), [t], steps=steps, lr=inner_lr) == pytest.approx(float(manual))


def test_engine_never_imports_optional_stacks():
    import subprocess
    import sys

    code = "import sys, fewshot_transfer.meta.engine, fewshot_transfer.meta.training; print(any(m in sys.modules for m in ('higher', 'learn2learn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_module_buffers_are_none():
    # GroupNorm backbone: nothing for functional_call to miss
    assert list(tiny_unet().buffers()) == []
    assert isinstance(tiny_unet().head, nn.Conv2d)
