"""Adversarial DA pieces and learners: discriminators learn, gradients point the right way,
regions route pixels correctly, and each adversarial learner trains on a tiny phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fewshot_transfer import learners
from fewshot_transfer.adaptation import (
    OutputAdversarialLoss,
    OutputDiscriminator,
    PixelDiscriminator,
    RegionAdversarialLoss,
    binary_softmax,
    class_balanced_weights,
    confident_regions,
    domain_accuracy,
    entropy_map,
    gather_pixels,
    lesion_prior_band,
    lesion_prior_penalty,
    masked_mean,
    output_space_input,
    region_at,
    self_information,
    set_requires_grad,
    slice_level_prior,
)
from fewshot_transfer.adaptation.probe import domain_probe, probe_accuracy
from fewshot_transfer.config import resolve_config
from fewshot_transfer.learners.adversarial import AdversarialBatch
from fewshot_transfer.metrics import evaluate
from fewshot_transfer.testing import registered
from fewshot_transfer.training import Params, TrainingDiverged

from conftest import TINY

ADVERSARIAL = registered("adversarial")


def _clouds(n_side: int = 8, c: int = 6, shift: float = 1.5, seed: int = 0):
    """Feature maps [4, C, n, n]: source pixels ~ N(0, 1), target pixels ~ N(shift, 1)."""
    g = torch.Generator().manual_seed(seed)
    f_s = torch.randn(4, c, n_side, n_side, generator=g)
    f_t = torch.randn(4, c, n_side, n_side, generator=g) + shift
    return f_s, f_t


def _train_pixel_disc(f_s, f_t, steps: int = 150) -> RegionAdversarialLoss:
    torch.manual_seed(0)
    adv = RegionAdversarialLoss({"all": PixelDiscriminator(f_s.shape[1])})
    opt = torch.optim.Adam(adv.parameters(), lr=1e-2)
    m_s = {"all": torch.ones(f_s.shape[0], 1, *f_s.shape[-2:], dtype=torch.bool)}
    m_t = {"all": torch.ones(f_t.shape[0], 1, *f_t.shape[-2:], dtype=torch.bool)}
    for _ in range(steps):
        loss, _ = adv.discriminator_loss(f_s, m_s, f_t, m_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return adv


# ----------------------------------------------------------------------------- discriminators
def test_pixel_discriminator_separates_gaussian_clouds():
    f_s, f_t = _clouds()
    adv = _train_pixel_disc(f_s, f_t)
    d = adv.discriminators["all"]
    with torch.no_grad():
        acc = 0.5 * ((d(f_s) < 0).float().mean() + (d(f_t) > 0).float().mean())
    assert acc > 0.9, float(acc)
    # pixel vectors and maps give the same logits
    vec = gather_pixels(f_t, torch.ones(4, 1, 8, 8, dtype=torch.bool))
    assert torch.allclose(d(vec), d(f_t).permute(0, 2, 3, 1).reshape(-1), atol=1e-6)


def test_output_discriminator_shapes_and_learns():
    torch.manual_seed(0)
    d = OutputDiscriminator(in_channels=2, ndf=4, n_down=4)
    assert d(torch.rand(2, 2, 64, 64)).shape == (2, 1, 2, 2)
    assert d(torch.rand(2, 2, 32, 32)).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="at least 32x32"):
        d(torch.rand(1, 2, 16, 16))
    # source maps: confident small blobs; target maps: diffuse, uncertain predictions
    z_s = torch.full((4, 1, 32, 32), -6.0)
    z_s[:, :, 10:16, 10:16] = 6.0
    z_t = torch.randn(4, 1, 32, 32) * 0.5
    adv = OutputAdversarialLoss(d)
    opt = torch.optim.Adam(adv.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(60):
        loss, stats = adv.discriminator_loss(z_s, z_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert (d(binary_softmax(z_s)) < 0).all() and (d(binary_softmax(z_t)) > 0).all()
    _, stats = adv.discriminator_loss(z_s, z_t)
    assert stats == {"dacc_src": 1.0, "dacc_tgt": 1.0}  # D's accuracy per domain, over its output cells


# ----------------------------------------------------------------------------- gradient sign
def test_feature_adversarial_gradient_moves_target_toward_source():
    f_s, f_t = _clouds()
    adv = _train_pixel_disc(f_s, f_t)
    d = adv.discriminators["all"]
    adv.zero_grad(set_to_none=True)
    set_requires_grad(adv, False)
    f = f_t.clone().requires_grad_(True)  # stands in for the segmentor's output
    regions = {"all": torch.ones(4, 1, 8, 8, dtype=torch.bool)}
    before = torch.sigmoid(d(f_t)).mean()
    loss, _ = adv.adversarial_loss(f, regions)
    loss.backward()
    assert all(p.grad is None for p in adv.parameters()), "frozen D must not collect grads"
    with torch.no_grad():
        after = torch.sigmoid(d(f - 1.0 * f.grad / f.grad.abs().max())).mean()
    assert after < before - 0.05, (float(before), float(after))  # P(target) drops: looks more like source


def test_output_adversarial_gradient_reaches_segmentor_with_sign():
    torch.manual_seed(0)
    seg = nn.Conv2d(1, 1, 3, padding=1)  # a tiny "segmentor"
    x_s = torch.zeros(4, 1, 32, 32)
    x_s[:, :, 8:14, 8:14] = 1.0
    x_t = x_s * 0.3
    adv = OutputAdversarialLoss(OutputDiscriminator(2, ndf=4))
    opt_d = torch.optim.Adam(adv.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(60):
        loss, _ = adv.discriminator_loss(seg(x_s), seg(x_t))
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in seg.parameters())  # D loss detaches
    set_requires_grad(adv, False)
    d = adv.discriminator
    with torch.no_grad():
        before = torch.sigmoid(d(binary_softmax(seg(x_t)))).mean()
    loss = adv.adversarial_loss(seg(x_t))
    loss.backward()
    assert seg.weight.grad is not None and seg.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in seg.parameters():
            p -= 0.5 * p.grad / p.grad.abs().max()
        after = torch.sigmoid(d(binary_softmax(seg(x_t)))).mean()
    assert after < before, (float(before), float(after))


# ----------------------------------------------------------------------------- routing
class _Spy(nn.Module):
    """A 'discriminator' that records the maps it is fed and returns a fixed linear score per position."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, c))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return (x * self.w[None, :, None, None]).sum(1, keepdim=True)


def test_regions_route_pixels_to_their_discriminator():
    torch.manual_seed(0)
    c = 3
    f_s = torch.randn(2, c, 6, 6)
    f_t = torch.randn(2, c, 6, 6, requires_grad=True)
    les_s = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    les_s[0, 0, 1:3, 1:3] = True  # 4 lesion pixels among 72
    les_t = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    les_t[1, 0, 4, 2:5] = True
    ign_t = torch.zeros_like(les_t)
    ign_t[0, 0, 0, :] = True  # unconfident pixels: neither region
    pos, neg = _Spy(c), _Spy(c)
    adv = RegionAdversarialLoss({"pos": pos, "neg": neg})
    src = {"pos": les_s, "neg": ~les_s}
    tgt = {"pos": les_t, "neg": ~les_t & ~ign_t}
    loss, stats = adv.discriminator_loss(f_s, src, f_t, tgt)
    px = lambda f, m: f.permute(0, 2, 3, 1)[m[:, 0]]  # noqa: E731
    assert torch.equal(pos.seen[0], f_s) and torch.equal(pos.seen[1], f_t.detach())  # whole maps: spatial context
    # each discriminator's loss is the masked mean over its own region (lesion not drowned)
    bce = lambda z, y: nn.functional.binary_cross_entropy_with_logits(z, torch.full_like(z, y))  # noqa: E731
    exp_pos = 0.5 * bce(px(f_s, les_s) @ pos.w, 0.0) + 0.5 * bce(px(f_t, les_t) @ pos.w, 1.0)
    exp_neg = 0.5 * bce(px(f_s, ~les_s) @ neg.w, 0.0) + 0.5 * bce(px(f_t, tgt["neg"]) @ neg.w, 1.0)
    assert math.isclose(stats["disc_pos"], float(exp_pos.detach()), rel_tol=1e-5)
    assert math.isclose(float(loss.detach()), float((exp_pos + exp_neg).detach()) / 2, rel_tol=1e-5)
    # D accuracy per region and domain: share of the region's logits on the right side of 0
    acc_neg_tgt = float(((px(f_t, tgt["neg"]) @ neg.w) > 0).float().mean())
    assert stats["dacc_neg_tgt"] == pytest.approx(acc_neg_tgt)
    assert stats["dacc_pos_src"] == pytest.approx(float(((px(f_s, les_s) @ pos.w) < 0).float().mean()))
    # the adversarial gradient reaches exactly the routed target pixels
    adv_loss, _ = adv.adversarial_loss(f_t, {"pos": les_t, "neg": torch.zeros_like(les_t)})
    adv_loss.backward()
    touched = f_t.grad.abs().sum(1, keepdim=True) > 0
    assert torch.equal(touched, les_t)
    # the lesion term is a mean over its 3 pixels, not over all 72
    assert math.isclose(float(adv_loss.detach()), float(bce(px(f_t, les_t) @ pos.w, 0.0).detach()), rel_tol=1e-5)


def test_domain_accuracy_and_region_resizing():
    assert domain_accuracy(torch.tensor([-1.0, 2.0, -3.0, -0.5]), 0.0) == 0.75
    assert domain_accuracy(torch.tensor([-1.0, 2.0]), 1.0) == 0.5
    assert math.isnan(domain_accuracy(torch.zeros(0), 1.0))
    m = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    m[0, 0, 0, 0] = True
    assert region_at(m, (2, 2), whole=False)[0, 0].tolist() == [[True, False], [False, False]]  # any lesion pixel
    assert region_at(~m, (2, 2), whole=True)[0, 0].tolist() == [[False, True], [True, True]]  # all background


def test_masked_mean_and_empty_region():
    v = torch.arange(8.0).view(2, 1, 2, 2)
    m = v > 5
    assert float(masked_mean(v, m)) == 6.5
    assert float(masked_mean(v, torch.zeros_like(m))) == 0.0
    adv = RegionAdversarialLoss({"pos": PixelDiscriminator(2)})
    f = torch.randn(1, 2, 4, 4, requires_grad=True)
    empty = {"pos": torch.zeros(1, 1, 4, 4, dtype=torch.bool)}
    loss, stats = adv.discriminator_loss(f, {"pos": torch.ones_like(empty["pos"])}, f, empty)
    assert float(loss) == 0.0 and stats == {}  # one-domain batch: D is not trained on it
    loss, _ = adv.adversarial_loss(f, empty)
    loss.backward()  # stays in the graph
    assert float(loss.detach()) == 0.0


def test_dual_adv_routing_respects_warmup_threshold_and_ignore_band():
    cls = learners.get("dual-adv")
    params = {**cls.defaults, "warmup": 5, "conf_threshold": 0.9, "ignore_radius": 0, "layer": "dec1"}

    class Ctx:
        pass

    ctx = Ctx()
    ctx.params = Params(params)
    logits = torch.full((3, 1, 6, 6), -5.0)  # confident background everywhere ...
    logits[2, 0, 0, 0] = 5.0  # ... but a confident lesion on the unlabeled row
    logits[2, 0, 4, 4] = 0.0  # and one unsure pixel
    y = torch.zeros(3, 1, 6, 6)
    y[1, 0, 5, 5] = 1.0
    feats = {"dec1": torch.zeros(3, 2, 6, 6)}
    learner = cls()
    assert not learner.pseudo_labels(ctx, 5) and learner.pseudo_labels(ctx, 6) and learner.pseudo_labels(ctx, 0)
    batch = AdversarialBatch(1, 1, 1, y[:1], y[1:2], logits, feats, pseudo=False)  # still warming up
    src, tgt, _ = learner.route(ctx, batch)
    assert tgt["pos"][1].sum() == 0 and tgt["neg"][1].sum() == 0
    assert tgt["pos"][0, 0, 5, 5] and tgt["neg"][0].sum() == 35
    assert torch.equal(src["pos"], y[:1] > 0.5)
    batch.pseudo = True
    _, tgt, stats = learner.route(ctx, batch)
    assert tgt["pos"][1].sum() == 1 and tgt["pos"][1, 0, 0, 0]
    assert tgt["neg"][1].sum() == 34  # neither the lesion nor the unsure pixel
    assert stats["routed_pos_u"] == pytest.approx(1 / 36)
    # with an ignore band of 1 px, the 3x3 neighbourhoods of both non-background pixels are ignored too
    ctx.params = Params({**params, "ignore_radius": 1})
    _, tgt, _ = learner.route(ctx, batch)
    assert tgt["neg"][1].sum() == 36 - 4 - 9
    # at a coarser layer a cell is background only if all its pixels are
    ctx.params = Params({**params, "ignore_radius": 0, "layer": "dec2"})
    batch.feats = {"dec2": torch.zeros(3, 4, 3, 3)}
    _, tgt, _ = learner.route(ctx, batch)
    assert tgt["pos"].shape[-2:] == (3, 3) and tgt["neg"][1].sum() == 9 - 2


def test_confident_regions_ignore_band():
    p = torch.full((1, 1, 7, 7), 0.01)
    p[0, 0, 3, 3] = 0.3  # a faint, missed lesion: not confident either way
    pos, neg = confident_regions(p, 0.9, ignore_radius=2)
    assert pos.sum() == 0
    assert neg.sum() == 49 - 25 and not neg[0, 0, 1:6, 1:6].any()


# ----------------------------------------------------------------------------- output-space pieces
def test_entropy_and_softmax_inputs():
    z = torch.tensor([[[[0.0, 20.0], [-20.0, 1.0]]]])
    p = binary_softmax(z)
    assert torch.allclose(p.sum(1), torch.ones(1, 2, 2))
    h = entropy_map(p)
    assert h[0, 0, 0, 0] == pytest.approx(1.0) and h[0, 0, 0, 1] < 1e-6
    assert torch.allclose(self_information(p).sum(1, keepdim=True), h)
    assert output_space_input(z, "entropy").shape == (1, 2, 2, 2)
    with pytest.raises(ValueError, match="softmax"):
        output_space_input(z, "logits")


def test_class_balanced_weights_give_lesion_half():
    les = torch.zeros(2, 1, 32, 32)
    les[0, 0, :4, :4] = 1  # 16 of 2048 pixels
    w = class_balanced_weights(les, (4, 4))
    assert w.shape == (2, 1, 4, 4) and float(w.sum()) == pytest.approx(1.0)
    assert float(w[0, 0, 0, 0]) == pytest.approx(0.5 + 0.5 * (1 - 0.25) / (32 - 0.25))
    assert float(class_balanced_weights(torch.zeros(1, 1, 8, 8), (2, 2)).sum()) == pytest.approx(1.0)


def test_lesion_prior_band_and_penalty():
    masks = np.zeros((2, 10, 10), np.uint8)
    masks[0, :2] = 1  # 20 % and 0 % -> prior 10 %
    prior, lo, hi = lesion_prior_band(masks, 0.25, 2.0)
    assert (prior, lo, hi) == pytest.approx((0.1, 0.025, 0.2))
    inside = torch.full((1, 1, 10, 10), -2.0)  # uncertain background: soft mean 0.2, hard 0.1
    inside[..., :1, :] = 8.0
    assert float(lesion_prior_penalty(inside, lo, hi)) == 0.0
    collapsed = torch.full((2, 1, 10, 10), -3.0, requires_grad=True)
    pen = lesion_prior_penalty(collapsed, lo, hi)
    assert float(pen.detach()) > 1.0
    pen.backward()
    assert (collapsed.grad < 0).all()  # descending the penalty raises every lesion logit
    half = torch.full((1, 1, 10, 10), float(torch.logit(torch.tensor(lo / 2)))) / 4.0
    assert float(lesion_prior_penalty(half, lo, hi, sharpness=4.0)) == pytest.approx(math.log(2) ** 2, rel=1e-3)
    flooded = torch.full((1, 1, 10, 10), 2.0, requires_grad=True)
    lesion_prior_penalty(flooded, lo, hi).backward()
    assert (flooded.grad > 0).all()


def test_confident_regions():
    p = torch.tensor([0.95, 0.5, 0.05, 0.91])
    pos, neg = confident_regions(p, 0.9)
    assert pos.tolist() == [True, False, False, True] and neg.tolist() == [False, False, True, False]


# ----------------------------------------------------------------------------- learners end to end
STEPS = 40


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from fewshot_transfer.harness.benchmark import prepare

    overrides = [TINY[i + 1] for i in range(0, len(TINY), 2)]
    overrides += [f"train.steps={STEPS}", "train.pretrain_steps=80", "model.base=8", "train.lr=0.003", "run.shots='3'"]
    return prepare(resolve_config(None, overrides), tmp_path_factory.mktemp("adv-bench"))


def _dice(bench, segmenter) -> float:
    summary, _ = evaluate(segmenter.predict(bench.test_set.images), bench.test_set.masks)
    return summary["dice"]


def test_adversarial_learners_are_registered():
    assert ADVERSARIAL, "the registry lists no learner of this family"
    for name in ADVERSARIAL:
        cls = learners.get(name)
        assert cls.family == "adversarial" and cls.uses_source and cls.uses_unlabeled

    class Trial:  # records what each search space asks for
        def __init__(self):
            self.names = []

        def suggest_float(self, name, lo, hi, **kw):
            self.names.append(name)
            return lo

        suggest_int = suggest_float

        def suggest_categorical(self, name, choices):
            self.names.append(name)
            return choices[0]

    for name in ADVERSARIAL:
        t = Trial()
        space = learners.get(name).search_space(t)
        assert {"lr", "lambda_adv"} <= set(space) and "steps" not in set(space)
        assert set(space) <= set(learners.get(name).defaults) | {"steps", "lr", "batch_size"}, name
    assert "input" in learners.get("adaptseg-balanced").search_space(Trial())
    assert {"layer", "ignore_radius"} <= set(learners.get("dual-adv").search_space(Trial()))
    for name in ADVERSARIAL:  # the discriminator's schedule is tuned, not fixed
        assert {"d_lr", "d_steps", "lambda_ramp"} <= set(learners.get(name).search_space(Trial()))


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_learner_trains(bench, name):
    cls = learners.get(name)
    ctx = bench.context(cls, 3, seed=0)
    untrained = _dice(bench, ctx.segmenter(ctx.new_model()))
    segmenter = cls().fit(ctx)
    trained = _dice(bench, segmenter)
    assert trained > untrained + 0.05, (name, untrained, trained)
    rows = [r for r in ctx.curves.rows if r["phase"] == "target"]
    assert len(rows) == STEPS // 10
    for col in ("seg", "adv", "disc"):
        assert all(np.isfinite(r[col]) for r in rows), col
    assert any(col.startswith("dacc_") for col in rows[-1])  # D accuracy in the loss curves
    summary = ctx.summary["adversarial"]
    assert summary["d_last"] and summary["d_after_warmup"]


def test_entropy_input_and_nan_divergence(bench):
    from fewshot_transfer.training import LearnerContext

    cls = learners.get("adaptseg-balanced")
    ctx = bench.context(cls, 3, seed=0)
    ctx.params = Params({**ctx.params, "steps": 3, "input": "entropy"})
    cls().fit(ctx)
    ctx = bench.context(cls, 3, seed=0)
    ctx.params = Params({**ctx.params, "steps": 3, "lambda_adv": float("nan")})
    with pytest.raises(TrainingDiverged, match="target"):
        cls().fit(ctx)
    assert isinstance(ctx, LearnerContext)


# ----------------------------------------------------------------------------- probe, prior, pretraining
def test_linear_probe_reads_separability():
    f_s, f_t = _clouds(shift=2.0)
    vec = lambda f: f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])  # noqa: E731
    assert probe_accuracy(vec(f_s[:2]), vec(f_t[:2]), vec(f_s[2:]), vec(f_t[2:])) > 0.95
    same_s, same_t = _clouds(shift=0.0, seed=1)
    assert abs(probe_accuracy(vec(same_s[:2]), vec(same_t[:2]), vec(same_s[2:]), vec(same_t[2:])) - 0.5) < 0.1
    # domain_probe fits on even slices, scores on odd ones
    x_s, x_t = torch.zeros(6, 1, 4, 4), torch.ones(6, 1, 4, 4)
    assert domain_probe(lambda x: torch.cat([x, x * x], 1), x_s + 0.1 * torch.randn(6, 1, 4, 4), x_t) == 1.0


def test_slice_level_prior_corrects_for_lesion_free_slices():
    shots = np.zeros((2, 10, 10), np.uint8)
    shots[0, :2] = 1  # one positive shot at 20 %, one lesion-free shot (ignored)
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[0, 0, :5] = 1  # 1 of 4 reference slices is lesion-positive
    assert slice_level_prior(shots, ref) == pytest.approx(0.2 * 0.25)
    assert slice_level_prior(shots[:0], ref) == pytest.approx(5 / 400)  # k = 0: the reference's mean fraction


def test_pretraining_trains_the_aux_head(bench):
    ctx = bench.context(learners.get("adaptseg"), 3, seed=0)
    model = ctx.source_model()
    init = ctx.new_model(salt=1)
    assert not torch.equal(model.aux_head.weight, init.aux_head.weight)
    rows = [r for r in ctx.curves.rows if r["phase"] == "pretrain"] or [None]
    assert rows[0] is None or "seg_aux" in rows[0]


# ----------------------------------------------------------------------------- exact controls (1 thread)
def _fit_eval(bench, name, k, overrides):
    cls = learners.get(name)
    ctx = bench.context(cls, k, seed=0)
    ctx.params = Params({**ctx.params, **overrides})
    seg = cls().fit(ctx)
    pred = seg.predict(bench.test_set.images)
    return pred, evaluate(pred, bench.test_set.masks)[0], ctx


def _off(name):
    """The learner's extra terms switched off: lambda 0, no aux seg term, no prior."""
    extra = {"aux_seg_weight": 0.0} if name.startswith("adaptseg") else {}
    if name == "adaptseg-balanced":
        extra["prior_weight"] = 0.0
    return {"lambda_adv": 0.0, "unlabeled_share": 0.0, "d_warmup": 5, **extra}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_lambda_zero_without_source_rows_is_finetune(bench, name):
    torch.set_num_threads(1)
    lr = 0.003
    base_pred, base, _ = _fit_eval(bench, "finetune", 3, {"lr": lr, "steps": 12})
    pred, got, _ = _fit_eval(bench, name, 3, {**_off(name), "lr": lr, "steps": 12, "source_share": 0.0})
    assert np.array_equal(pred, base_pred) and got == base


@pytest.mark.parametrize("name", ["dual-adv", "adaptseg-balanced"])
def test_lambda_zero_with_half_source_rows_is_joint(bench, name):
    torch.set_num_threads(1)
    lr = 0.001
    base_pred, base, _ = _fit_eval(bench, "joint", 3, {"lr": lr, "steps": 12, "source_share": 0.5})
    pred, got, _ = _fit_eval(bench, name, 3, {**_off(name), "lr": lr, "steps": 12, "source_share": 0.5})
    assert np.array_equal(pred, base_pred) and got == base
    # a non-zero lambda does change the result: the control is not vacuous
    pred, _, _ = _fit_eval(
        bench,
        name,
        3,
        {
            **_off(name),
            "lr": lr,
            "steps": 12,
            "source_share": 0.5,
            "lambda_adv": 1.0,
            "lambda_ramp": 0.0,
            "unlabeled_share": 0.5,
        },
    )
    assert not np.array_equal(pred, base_pred)


@pytest.mark.parametrize("name", ["dual-adv", "adaptseg"])
def test_k0_unsupervised_mode(bench, name):
    cls = learners.get(name)
    assert cls.supports_k0
    ctx = bench.context(cls, 1, seed=0)
    ctx.support, ctx.k = ctx.support.subset([]), 0
    ctx.params = Params({**ctx.params, "steps": 6, "d_warmup": 5})
    cls().fit(ctx)
    summary = ctx.summary["adversarial"]
    assert summary["rows"]["target"] == 0 and summary["rows"]["source"] > 0 and summary["rows"]["unlabeled"] > 0
    assert summary["d_last"]  # D trained on source rows vs unlabeled target rows
    ctx.params = Params({**ctx.params, "unlabeled_share": 0.0})
    with pytest.raises(ValueError, match="k = 0 needs unlabeled"):
        cls().fit(ctx)


def test_discriminator_warm_up_learns_the_domains(bench):
    cls = learners.get("dual-adv")
    ctx = bench.context(cls, 3, seed=0)
    ctx.params = Params({**ctx.params, "steps": 1, "d_warmup": 60, "d_lr": 3e-3})
    cls().fit(ctx)
    warm = ctx.summary["adversarial"]["d_after_warmup"]
    balanced = 0.5 * (warm["dacc_pos_src"] + warm["dacc_pos_tgt"])
    assert balanced > 0.7, warm  # CAP consolidation vs COVID ground glass: a learning D tells them apart
