"""Each baseline learner lowers its loss and beats an untrained model on a tiny phantom."""

from __future__ import annotations

import numpy as np
import pytest

from fewshot_transfer import learners
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.metrics import evaluate
from fewshot_transfer.testing import registered

from conftest import TINY

STEPS = 60


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    overrides = [TINY[i + 1] for i in range(0, len(TINY), 2)]
    overrides += [f"train.steps={STEPS}", "train.pretrain_steps=80", "model.base=8", "train.lr=0.003", "run.shots='3'"]
    return prepare(resolve_config(None, overrides), tmp_path_factory.mktemp("bench"))


def _dice(data, segmenter) -> float:
    summary, _ = evaluate(segmenter.predict(data.images), data.masks)
    return summary["dice"]


@pytest.mark.parametrize("name", registered("baseline"))
def test_baseline_learns(bench, name):
    """Target learners are judged on the target test set; source-only (zero-shot) on source validation."""
    cls = learners.get(name)
    ctx = bench.context(cls, 3, seed=0)
    data = bench.source_val if name == "source-only" else bench.test_set
    untrained = _dice(data, ctx.segmenter(ctx.new_model()))
    segmenter = cls().fit(ctx)
    trained = _dice(data, segmenter)
    assert trained > untrained + 0.05, (name, untrained, trained)
    for phase in {r["phase"] for r in ctx.curves.rows}:
        seg = [r["seg"] for r in ctx.curves.rows if r["phase"] == phase]
        if len(seg) >= 4:
            assert np.mean(seg[-2:]) < np.mean(seg[:2]), (name, phase, seg)


def test_source_pretraining_is_cached(bench):
    ctx = bench.context(learners.get("finetune"), 3, seed=1)
    before = bench.cache.misses
    a = ctx.source_model()
    b = bench.context(learners.get("joint"), 1, seed=1).source_model()
    assert bench.cache.misses == before + 1
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and (va == vb).all()
    assert list(bench.cache.root.glob("source-*.pt"))


def test_same_seed_same_numbers(bench):
    """Determinism on CPU: one cell twice gives identical predictions."""
    preds = []
    for _ in range(2):
        ctx = bench.context(learners.get("scratch"), 3, seed=2)
        preds.append(learners.get("scratch")().fit(ctx).predict(bench.test_set.images))
    assert np.array_equal(preds[0], preds[1])
