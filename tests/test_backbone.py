"""The shared U-Net: shapes, named features, and torch.func compatibility."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

from fewshot_transfer.losses import seg_loss, soft_dice_loss
from fewshot_transfer.models import UNet, build_unet
from fewshot_transfer.models.unet import UNetConfig


@pytest.mark.parametrize("depth,size", [(3, 32), (4, 64), (4, 40)])
def test_output_and_feature_shapes(depth, size):
    torch.manual_seed(0)
    net = UNet(base=4, depth=depth)
    x = torch.rand(2, 1, size, size)
    logits, feats = net(x, return_features=True)
    assert logits.shape == (2, 1, size, size)
    assert feats["aux_logits"].shape == (2, 1, size, size)
    assert feats["dec1"].shape == (2, 4, size, size)
    assert feats["bottleneck"].shape[1] == 4 * 2 ** (depth - 1)
    for name, ch in net.feature_channels.items():
        assert feats[name].shape[1] == ch, name
    assert torch.equal(net(x), logits)


def test_no_buffers_by_default():
    """GroupNorm default: nothing updated in place, as torch.func and MAML need."""
    assert list(UNet(base=4, depth=3).buffers()) == []
    assert list(UNet(base=4, depth=3, norm="batch").buffers())


def test_functional_call_matches_module():
    torch.manual_seed(0)
    net = UNet(base=4, depth=3)
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.rand(3, 1, 32, 32)
    assert torch.allclose(functional_call(net, params, (x,)), net(x))


def test_grad_and_vmap_over_tasks():
    """Per-task gradients via vmap(grad(...)) equal a loop of autograd gradients."""
    torch.manual_seed(0)
    net = UNet(base=4, depth=3)
    params = {k: v.detach() for k, v in net.named_parameters()}
    xs = torch.rand(2, 2, 1, 32, 32)
    ys = (torch.rand(2, 2, 1, 32, 32) > 0.9).float()

    def loss(p, x, y):
        return seg_loss(functional_call(net, p, (x,)), y)

    g_vmap = vmap(grad(loss), in_dims=(None, 0, 0), randomness="same")(params, xs, ys)
    for t in range(2):
        net.zero_grad()
        seg_loss(net(xs[t]), ys[t]).backward()
        for name, p in net.named_parameters():
            expected = torch.zeros_like(p) if p.grad is None else p.grad  # aux head unused here
            assert torch.allclose(g_vmap[name][t], expected, atol=1e-5, rtol=1e-4), name


def test_bad_model_config():
    with pytest.raises(ValueError, match="unknown \\[model\\] keys"):
        build_unet({"base": 4, "widht": 3})
    with pytest.raises(ValueError, match="unknown norm"):
        UNet(norm="layer")
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=2)


def test_seg_loss_prefers_correct_prediction():
    y = torch.zeros(1, 1, 16, 16)
    y[..., 4:8, 4:8] = 1
    good = (y * 2 - 1) * 8
    bad = -good
    empty = torch.full_like(y, -8.0)
    assert seg_loss(good, y) < seg_loss(empty, y) < seg_loss(bad, y) + 1e-6
    # Dice term: predicting nothing on a lesion slice costs ~1, not ~0 as BCE alone would suggest.
    assert soft_dice_loss(empty, y) > 0.9


def test_encoder_transform_hook_leaves_the_network_unchanged():
    """The feature-perturbation hook: identity = the plain forward bit for bit (features too);
    a transform changes only what the decoder reads, never the parameters."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(base=4, depth=3))
    x = torch.randn(2, 1, 32, 32)
    plain, feats = net(x, return_features=True)
    same, same_feats = net(x, return_features=True, encoder_transform=lambda t: t)
    assert torch.equal(plain, same) and all(torch.equal(feats[k], same_feats[k]) for k in feats)
    assert torch.equal(net(x), plain)
    dropped = net(x, encoder_transform=lambda t: torch.nn.functional.dropout2d(t, 0.5, training=True))
    assert dropped.shape == plain.shape and not torch.equal(dropped, plain)
    assert not any(b for b in net.buffers())
