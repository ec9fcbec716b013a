"""Semi-supervised learners: learning, label hygiene, k = 0, tuning space (their controls: tests/test_registry.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
import torch

from fewshot_transfer import learners
from fewshot_transfer.augment import StrongConfig, cutmix_boxes, strong_ct
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.learners.bcp import box_mask, largest_component, region_loss
from fewshot_transfer.learners.pseudo_label import PseudoLabelHooks, masked_bce, masked_seg_loss
from fewshot_transfer.learners.ua_mt import binary_entropy
from fewshot_transfer.learners.unimatch import channel_dropout, confident_bce
from fewshot_transfer.metrics import evaluate
from fewshot_transfer.testing import registered
from fewshot_transfer.training import Params, labeled_batches, train_steps
from fewshot_transfer.tuning.space import searched_names

from conftest import TINY

STEPS = 60
#: The registered semi-supervised learners (their control identities, unlabeled weight 0 =
#: scratch / finetune bit for bit, are checked with every learner's in tests/test_registry.py).
SEMI = tuple(registered("semi"))
#: The loss-curve column of each learner's unlabeled term (by name without ``-cap``).
TERM = {
    "pseudo-label": "pseudo",
    "mean-teacher": "consistency",
    "bcp": "bcp",
    "unimatch": "feature",
    "fixmatch": "strong",
    "cps": "cps",
    "ua-mt": "consistency",
}
SHORT = 12


def _short(name: str) -> dict:
    """A 12-step schedule in which the unlabeled term is active: pseudo-label warms up for 3 steps,
    bcp pre-trains for 3; the weak-to-strong learners trust 0.6-confident pixels (a 12-step model
    has none at 0.95, and a term over no pixel has no gradient)."""
    if name.startswith("pseudo"):
        return {"steps": SHORT, "warmup_share": 0.25}
    if name in ("unimatch", "fixmatch"):
        return {"steps": SHORT, "confidence": 0.6}
    return {"steps": SHORT}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    overrides = [TINY[i + 1] for i in range(0, len(TINY), 2)]
    overrides += [f"train.steps={STEPS}", "train.pretrain_steps=80", "model.base=8", "train.lr=0.003", "run.shots='3'"]
    return prepare(resolve_config(None, overrides), tmp_path_factory.mktemp("bench"))


def _ctx(bench, name: str, k: int = 3, seed: int = 0, **params):
    cls = learners.get(name)
    ctx = bench.context(cls, k, seed=seed)
    return dataclasses.replace(ctx, params=Params({**ctx.params, **params}))


def _dice(data, segmenter) -> float:
    summary, _ = evaluate(segmenter.predict(data.images), data.masks)
    return summary["dice"]


def _term(name: str) -> str:
    return TERM[name.removesuffix("-cap")]


def test_registered_as_semi_family():
    assert SEMI, "the registry lists no learner of this family"
    for name in SEMI:
        cls = learners.get(name)
        assert cls.family == "semi" and cls.uses_unlabeled and cls.uses_target
        assert cls.uses_source == name.endswith("-cap")
        assert cls.supports_k0 == name.endswith("-cap")
    assert learners.get("pseudo-label-cap").defaults["lr"] == learners.get("finetune").defaults["lr"]
    assert learners.get("mean-teacher-cap").defaults["lr"] == learners.get("finetune").defaults["lr"]


@pytest.mark.parametrize("name", SEMI)
def test_search_space_resolves(name):
    """Every value the tuner can suggest is a known, in-range hyperparameter of the learner."""
    cls = learners.get(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        suggested = cls.search_space(study.ask())
        assert "unlabeled_weight" in suggested
        params = cls.resolve_params(resolve_config(None, []) | {"learners": {name: suggested}})
        assert all(params[key] == pytest.approx(value) for key, value in suggested.items())
    free, fixed = searched_names(cls, {})
    assert "unlabeled_weight" in free and not fixed


@pytest.mark.parametrize("name", SEMI)
def test_semi_learner_learns(bench, name):
    """Trained on 3 shots plus unlabeled slices, Dice beats the untrained backbone and the loss falls."""
    ctx = _ctx(bench, name, lr=0.002)  # the tiny backbone's lr (phantom-scale defaults are higher)
    untrained = _dice(bench.test_set, ctx.segmenter(ctx.new_model()))
    trained = _dice(bench.test_set, learners.get(name)().fit(ctx))
    assert trained > untrained + 0.05, (name, untrained, trained)
    seg = [row["seg"] for row in ctx.curves.rows if row["phase"] == "target"]
    assert np.mean(seg[-2:]) < np.mean(seg[:2]), (name, seg)
    assert any(_term(name) in row for row in ctx.curves.rows)


@pytest.mark.parametrize("name", SEMI)
def test_unlabeled_masks_are_never_read(bench, name):
    """The same unlabeled images with every mask set to lesion (and flagged labeled) give the same model."""
    ctx = _ctx(bench, name, **_short(name))
    pool = ctx.unlabeled
    assert not pool.masks.any() and not pool.labeled.any()
    poisoned = dataclasses.replace(pool, masks=np.ones_like(pool.masks), labeled=np.ones_like(pool.labeled))
    other = dataclasses.replace(ctx, _unlabeled=poisoned, curves=type(ctx.curves)())
    images = bench.test_set.images
    a = learners.get(name)().fit(ctx).predict_proba(images)
    b = learners.get(name)().fit(other).predict_proba(images)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("name", [n for n in SEMI if not learners.get(n).supports_k0])
def test_plain_variants_refuse_k0(bench, name):
    ctx = _ctx(bench, name)
    ctx = dataclasses.replace(ctx, support=ctx.support.subset([]), k=0)
    with pytest.raises(ValueError, match="k >= 1"):
        learners.get(name)().fit(ctx)


def test_ignored_pixels_do_not_reach_the_pseudo_label_loss():
    """Pixels below the confidence threshold change neither the loss nor its gradient."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, generator=gen, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8, generator=gen) > 0.7).float()
    keep = (torch.rand(2, 1, 8, 8, generator=gen) > 0.5).float()
    loss = masked_seg_loss(logits, target, keep)
    loss.backward()
    assert (logits.grad[keep == 0] == 0).all() and (logits.grad[keep == 1] != 0).any()
    flipped = torch.where(keep.bool(), target, 1 - target)
    assert torch.allclose(masked_seg_loss(logits.detach(), flipped, keep), loss.detach())
    assert masked_seg_loss(logits.detach(), target, torch.zeros_like(keep)) == 0


def test_pseudo_label_term_is_cross_entropy_on_the_teachers_confident_pixels(bench):
    """The term is BCE against the frozen teacher's hard labels over its confident pixels only:
    no Dice, which an almost empty pseudo-label set turns into a reward for predicting nothing."""
    from fewshot_transfer.training import StepBatch

    ctx = _ctx(bench, "pseudo-label-cap", k=3)
    model = ctx.source_model()
    hooks = PseudoLabelHooks(ctx, model, warmup=0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, *bench.test_set.shape, generator=gen)
    student = model(x).detach() + torch.randn(6, 1, *bench.test_set.shape, generator=gen)
    batch = StepBatch(step=1, n_labeled=2, x=x, y=torch.zeros(2, 1, *bench.test_set.shape), logits=student)
    [(name, weight, term)], stats = hooks.terms(batch)
    with torch.no_grad():
        prob = torch.sigmoid(model(x[2:]))
    label = (prob >= ctx.train.threshold).float()
    keep = (torch.maximum(prob, 1 - prob) >= ctx.params.confidence).float()
    assert 0 < keep.mean() < 1  # some pixels are ignored, so the mask is exercised
    assert (name, weight) == ("pseudo", ctx.params.unlabeled_weight)
    assert torch.allclose(term, masked_bce(student[2:], label, keep))
    assert not torch.allclose(term, masked_seg_loss(student[2:], label, keep))
    assert stats["pl_confident"] == pytest.approx(float(keep.mean()))


def test_bcp_mask_and_largest_component():
    """M is all ones but a zero box of int(2/3 H) x int(2/3 W); pseudo-labels keep their largest 8-connected piece."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        m = box_mask(torch.Size([4, 1, 30, 21]), 2 / 3, gen)
        zero = (m[0, 0] == 0).nonzero()
        assert m.shape == (1, 1, 30, 21) and set(m.unique().tolist()) == {0.0, 1.0}
        assert len(zero) == 20 * 14 and np.ptp(zero[:, 0].numpy()) == 19 and np.ptp(zero[:, 1].numpy()) == 13
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, :2, :2] = 1  # 4 pixels
    mask[0, 0, 4:7, 4:7] = 1  # 9 pixels: kept
    mask[0, 0, 3, 3] = 1  # touches the 9-pixel block diagonally: part of it
    kept = largest_component(mask)
    assert kept[0, 0, :2, :2].sum() == 0 and kept[0].sum() == 10 and kept[1].sum() == 0


def test_bcp_region_loss_weights_each_region():
    """Pseudo-labeled pixels count ``pseudo_weight``; a region's loss ignores the labels outside it."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 6, 6, generator=gen)
    a, b = (torch.rand(2, 1, 6, 6, generator=gen) > 0.5).float(), (torch.rand(2, 1, 6, 6, generator=gen) > 0.5).float()
    m = box_mask(logits.shape, 2 / 3, gen).expand_as(logits)
    whole = region_loss(logits, [(a, m, 0.5), (b, 1 - m, 1.0)])
    assert whole == pytest.approx(0.5 * float(masked_seg_loss(logits, a, m)) + float(masked_seg_loss(logits, b, 1 - m)))
    assert region_loss(logits, [(a * m, m, 1.0)]) == pytest.approx(float(region_loss(logits, [(a, m, 1.0)])))


def test_strong_ct_view_and_cutmix_boxes():
    """Strong views stay in the window, keep the geometry (a lesion-free flat slice stays flat without
    blur / noise) and differ per row; CutMix boxes cover 2-40 % of the slice or nothing."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 32, 32, generator=gen)
    view = strong_ct(x, StrongConfig(), gen)
    assert view.shape == x.shape and view.min() >= 0 and view.max() <= 1 and not torch.equal(view, x)
    flat = strong_ct(torch.full((3, 1, 16, 16), 0.3), StrongConfig(noise_hu=0.0, blur_p=0.0), gen)
    assert all(torch.allclose(row, row.flatten()[0].expand_as(row)) for row in flat)
    boxes = cutmix_boxes(torch.Size([200, 1, 32, 32]), StrongConfig(), gen)
    share = boxes.mean(dim=(1, 2, 3))
    drawn = share[share > 0]
    assert 0.3 < len(drawn) / 200 < 0.7 and drawn.min() >= 0.015 and drawn.max() <= 0.42


def test_weak_to_strong_pieces():
    """UniMatch's loss counts confident pixels over all pixels; channel dropout drops whole channels."""
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.ones(1, 1, 2, 2)
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert confident_bce(logits, target, keep) == pytest.approx(np.log(2) / 4)
    feats = torch.ones(8, 16, 4, 4)
    dropped = channel_dropout(0.5, torch.Generator().manual_seed(0))(feats)
    per_channel = dropped.amax(dim=(2, 3))
    assert set(per_channel.unique().tolist()) == {0.0, 2.0} and (dropped == per_channel[..., None, None]).all()


def test_ua_mt_entropy_is_the_two_class_entropy():
    p = torch.tensor([0.5, 0.0, 1.0, 0.9])
    got = binary_entropy(p)
    assert got[0] == pytest.approx(np.log(2), abs=1e-5) and got[1] < 1e-4 and got[2] < 1e-4
    assert got[3] == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), abs=1e-5)


def test_cps_evaluates_segmentor_a_and_b_starts_elsewhere(bench):
    """The returned model is A (scratch's initialisation); B is initialised differently and trains too."""
    ctx = _ctx(bench, "cps", steps=2)
    model = ctx.new_model()
    hooks = learners.get("cps")().hooks(ctx, model)
    a0 = {k: v.clone() for k, v in model.state_dict().items()}
    b0 = {k: v.clone() for k, v in hooks.other.state_dict().items()}
    assert not all(torch.equal(a0[k], b0[k]) for k in a0)
    scratch = _ctx(bench, "scratch").new_model().state_dict()
    assert all(torch.equal(a0[k], scratch[k]) for k in a0)
    train_steps(
        ctx,
        model,
        labeled_batches(ctx, ctx.support, ctx.params.batch_size),
        steps=2,
        lr=0.01,
        phase="target",
        hooks=hooks,
    )
    assert not all(torch.equal(b0[k], v) for k, v in hooks.other.state_dict().items())
