"""Semi-supervised learners: fair-protocol controls, learning, label hygiene, k = 0, tuning space."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
import torch

from fewshot_transfer import learners
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.learners.pseudo_label import masked_seg_loss
from fewshot_transfer.metrics import evaluate
from fewshot_transfer.training import Params

from conftest import TINY

STEPS = 60
SEMI = ("pseudo-label", "pseudo-label-cap", "mean-teacher", "mean-teacher-cap")
#: Each semi-supervised learner with its unlabeled weight at 0 is this supervised learner.
COUNTERPART = {
    "pseudo-label": "scratch",
    "pseudo-label-cap": "finetune",
    "mean-teacher": "scratch",
    "mean-teacher-cap": "finetune",
}
TERM = {"pseudo-label": "pseudo", "mean-teacher": "consistency"}
SHORT = 12


def _short(name: str) -> dict:
    """A 12-step schedule in which the unlabeled term is active (pseudo-label: warm-up of 3 steps)."""
    return {"steps": SHORT, "warmup_share": 0.25} if name.startswith("pseudo") else {"steps": SHORT}


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


@pytest.mark.parametrize("name", SEMI)
def test_unlabeled_weight_zero_is_the_supervised_counterpart(bench, name):
    """Weight 0 reproduces scratch / finetune bit for bit; weight 1 does not (the term is live)."""
    base = COUNTERPART[name]
    reference = _ctx(bench, base, steps=SHORT)
    off = _ctx(bench, name, **_short(name), unlabeled_weight=0.0)
    on = _ctx(bench, name, **_short(name), unlabeled_weight=1.0)
    assert off.params.lr == reference.params.lr
    images = bench.test_set.images
    expected = learners.get(base)().fit(reference).predict_proba(images)
    assert np.array_equal(learners.get(name)().fit(off).predict_proba(images), expected)
    assert not np.array_equal(learners.get(name)().fit(on).predict_proba(images), expected)
    assert any(_term(name) in row for row in on.curves.rows)


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


@pytest.mark.parametrize("name", ["pseudo-label", "mean-teacher-cap"])
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


@pytest.mark.parametrize("name", ["pseudo-label-cap", "mean-teacher-cap"])
def test_cap_variants_run_at_k0(bench, name):
    """With no shots the -cap variants train on CAP rows plus the unlabeled term, from the source model."""
    ctx = _ctx(bench, name, **_short(name))
    ctx = dataclasses.replace(ctx, support=ctx.support.subset([]), k=0)
    source = ctx.segmenter(ctx.source_model()).predict_proba(bench.test_set.images)
    proba = learners.get(name)().fit(ctx).predict_proba(bench.test_set.images)
    assert np.isfinite(proba).all() and not np.array_equal(proba, source)
    assert any(_term(name) in row for row in ctx.curves.rows)


@pytest.mark.parametrize("name", ["pseudo-label", "mean-teacher"])
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
