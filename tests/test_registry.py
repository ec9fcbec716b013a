"""Every registered learner, found through the registry, passes ``fewshot_transfer.testing``'s
checks: smoke fits at the smallest k it supports and at k = 0 where it claims to, the bit-for-bit
identity of its control with the learner it names (``Control(same_as=...)``), and a mechanism
that changes the weights. A new built-in is tested the moment it is registered; the last
tests show that each check fails a learner that breaks it."""

from __future__ import annotations

import numpy as np
import pytest

from fewshot_transfer import learners
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.learners.base import REGISTRY, Control, register
from fewshot_transfer.learners.controls import register_controls
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.learners.hparams import HP
from fewshot_transfer.testing import Checker, LearnerCheckError, tiny_config

BUILTINS = learners.available()


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    """One tiny benchmark for every learner; fits are shared (scratch and finetune serve many controls)."""
    return Checker(prepare(tiny_config(), tmp_path_factory.mktemp("check")))


@pytest.mark.parametrize("name", BUILTINS)
def test_every_registered_learner_passes_the_checks(checker, name):
    cls = learners.get(name)
    done = checker.check(name)
    ks = [0] if cls.k_independent else [1, 0] if cls.supports_k0 else [1]
    assert [line for line in done if "fit at" in line] == [f"{name}: fit at k = {k}, finite predictions" for k in ks]
    if cls.control is not None:
        assert sum("mechanism on" in line for line in done) == len(ks)
        assert any("bit for bit" in line for line in done) == bool(cls.control.same_as)


@pytest.fixture
def scratch_registry():
    """Learners registered by a test are removed afterwards."""
    learners.available()
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)


def _register(cls):
    register(cls)
    register_controls()
    return cls


def test_a_mechanism_that_changes_nothing_fails(checker, scratch_registry):
    @_register
    class Inert(Finetune):
        name = "check-inert"
        hparams = {**Finetune.hparams, "strength": HP(1.0, "never read")}
        control = Control(off={"strength": 0.0}, same_as="finetune")  # strength is never read

    with pytest.raises(LearnerCheckError, match="the mechanism changes nothing"):
        checker.check(Inert)


def test_a_false_same_as_fails(checker, scratch_registry):
    @_register
    class Pretends(Finetune):
        name = "check-pretends"
        hparams = {**Finetune.hparams, "strength": HP(1.0, "switches the lr")}
        control = Control(off={"strength": 0.0}, same_as="scratch")  # it starts from the source model

        def fit(self, ctx):
            if ctx.params.strength:
                ctx.params = type(ctx.params)({**ctx.params, "lr": 0.001})
            return super().fit(ctx)

    with pytest.raises(LearnerCheckError, match="check-pretends-control is not scratch bit for bit"):
        checker.check(Pretends)


def test_untrained_or_broken_predictions_fail(checker, scratch_registry):
    @_register
    class Forgets(Finetune):
        name = "check-forgets"
        control = None

        def fit(self, ctx):
            super().fit(ctx)
            return ctx.segmenter(ctx.source_model())  # trained, then returns where it started

    @_register
    class Nan(Finetune):
        name = "check-nan"
        control = None

        def fit(self, ctx):
            segmenter = super().fit(ctx)
            segmenter.predict_proba = lambda images: np.full(images.shape, np.nan, np.float32)
            return segmenter

    with pytest.raises(LearnerCheckError, match="ends at the source-pretrained backbone's weights"):
        checker.check(Forgets)
    with pytest.raises(LearnerCheckError, match="not finite probabilities"):
        checker.check(Nan)
