"""``ftbench tune``: validation split, pruning, resume, best.toml -> ``ftbench run``."""

from __future__ import annotations

import json
import time

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from fewshot_transfer import learners
from fewshot_transfer.cli import main
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.learners.base import REGISTRY, Learner
from fewshot_transfer.learners.hparams import HP, LR, LogUniform, Uniform
from fewshot_transfer.plan import TunedFrom
from fewshot_transfer.tuning.space import PinnedTrial, searched_names
from fewshot_transfer.tuning.storage import make_storage, redact
from fewshot_transfer.tuning.validation import validation_benchmark

from conftest import TINY


def _overrides(args: list[str]) -> list[str]:
    return [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--set"]


class _Threshold(nn.Module):
    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.t) * 50.0


class ThresholdLearner(Learner):
    """Test-only learner without training: lesion = pixels brighter than ``t``.

    ``t`` >= 1 predicts nothing (Dice 0), small ``t`` predicts the bright tissue (Dice > 0),
    so the order of trials below the median is known in advance.
    """

    name = "test-threshold"
    uses_source = False
    hparams = {"lr": LR.but(search=None), "t": HP(0.5, "brightness threshold", search=Uniform(0.0, 2.0))}

    def fit(self, ctx):
        return ctx.segmenter(_Threshold(float(ctx.params["t"])))


@pytest.fixture
def threshold_learner():
    REGISTRY[ThresholdLearner.name] = ThresholdLearner
    yield ThresholdLearner
    REGISTRY.pop(ThresholdLearner.name, None)


def test_validation_split_is_carved_from_the_support_pool(tmp_path):
    cfg = resolve_config(None, _overrides(TINY) + ['run.shots="2"'])
    bench = prepare(cfg, tmp_path)
    vb, info = validation_benchmark(bench, "2", val_fraction=0.5, seed=0)
    tune_p, val_p = set(info["tune_support"]), set(info["validation"])
    assert tune_p and val_p and not tune_p & val_p
    assert tune_p | val_p == set(bench.support_pool.patient_ids())
    assert not (tune_p | val_p) & set(bench.split.test), "validation must never use test patients"
    assert set(vb.test_set.patients) == val_p and set(vb.support_pool.patients) == tune_p
    assert vb.test_set.labeled.all() and (vb.test_set.lesion_fraction() > 0).any()
    assert vb.shots == [("2", 2)] and vb._supports is not bench._supports
    assert set(vb.support_set(2, 0).patients) <= tune_p
    # Deterministic: the same split for every worker and every resume.
    assert validation_benchmark(bench, "2", val_fraction=0.5, seed=0)[1] == info
    # The original benchmark is untouched.
    assert set(bench.test_set.patients) == set(bench.split.test)


def test_pinned_parameters_are_not_searched():
    class Cls(Learner):
        name = "x"
        hparams = {"weight_decay": HP(0.0, "L2 penalty", search=LogUniform(1e-6, 1e-3))}

    free, fixed = searched_names(Cls, {"weight_decay": 1e-4})
    assert free == ["lr"] and fixed == ["weight_decay"]
    with pytest.raises(ValueError, match="fixed by"):
        searched_names(Cls, {"weight_decay": 1e-4, "lr": 1e-3})
    study = optuna.create_study()
    trial = study.ask()
    params = Cls.search_space(PinnedTrial(trial, {"weight_decay": 1e-4}))
    assert params["weight_decay"] == 1e-4 and "weight_decay" not in trial.params and "lr" in trial.params


def test_no_learner_searches_the_target_budget():
    """The fair protocol fixes train.steps for everyone: a study may not buy a learner more steps."""
    for name in learners.available():
        cls = learners.get(name)
        try:
            free, _ = searched_names(cls, {})
        except ValueError:
            continue
        assert "steps" not in free and "batch_size" not in free, name
    assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"


def test_tune_prunes_a_trial_and_writes_best_toml(tmp_path, threshold_learner, capsys):
    out = tmp_path / "tune"
    args = [
        "tune",
        "test-threshold",
        *TINY,
        "--shots",
        "2",
        "--episodes",
        "2",
        "--out",
        str(out),
        "--startup-trials",
        "2",
        "--warmup-episodes",
        "0",
        "--no-progress",
        "--sampler-seed",
        "0",
        "--enqueue",
        "t=0.05",
        "--enqueue",
        "t=0.2",
        "--enqueue",
        "t=1.5",
    ]
    assert main([*args, "--trials", "3"]) == 0
    study = optuna.load_study(study_name="test-threshold-k2", storage=f"sqlite:///{out / 'study.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.params["t"] for t in trials] == [0.05, 0.2, 1.5]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    # The pruned trial reported one running-mean value (episode 0) and stopped.
    assert list(trials[2].intermediate_values) == [0] and len(trials[2].user_attrs["episode_dice"]) == 1
    for t in trials[:2]:
        dice = t.user_attrs["episode_dice"]
        assert len(dice) == 2 and t.value == pytest.approx(np.mean(dice)) and t.value > 0
        assert t.intermediate_values[1] == pytest.approx(t.value)
    best = resolve_config(out / "best.toml")
    assert best["learners"]["test-threshold"]["t"] == study.best_trial.params["t"]
    # tuned_from is structured: one table per study, read back as the one-line provenance.
    assert best["tuned_from"] == {
        "test-threshold-k2": {
            "storage": f"sqlite:///{out / 'study.db'}",
            "trial": study.best_trial.number,
            "score_name": "val Dice",
            "score": study.best_trial.value,
            "sampler_seed": 0,
        }
    }
    assert TunedFrom.read(best["tuned_from"]).text == (
        f"test-threshold-k2 @ sqlite:///{out / 'study.db'} trial #{study.best_trial.number} "
        f"(val Dice {study.best_trial.value:.4f}, sampler seed 0)"
    )
    assert (
        best["run"]["selection"] == "val" and "# Selection rule: val; sampler seed 0" in (out / "best.toml").read_text()
    )
    split = json.loads((out / "validation_split.json").read_text())
    assert not set(split["validation"]) & set(split["excluded_test"])
    # Same study, different setup (3 episodes instead of 2): refused rather than mixed.
    capsys.readouterr()
    assert main([*args, "--trials", "3", "--episodes", "3"]) == 1
    assert "different tuning setup (episodes differ)" in capsys.readouterr().err


def test_tune_finetune_resumes_and_best_toml_runs(tmp_path):
    out = tmp_path / "tune"
    args = [
        "tune",
        "finetune",
        *TINY,
        "--set",
        "learners.finetune.steps=3",
        "--shots",
        "2",
        "--episodes",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--pruner",
        "none",
    ]
    t0 = time.perf_counter()
    assert main([*args, "--trials", "2"]) == 0
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name="finetune-k2", storage=storage)
    assert len(study.trials) == 2
    # Resume: the study already holds 2 finished trials, so --trials 3 runs exactly one more.
    assert main([*args, "--trials", "3"]) == 0
    study = optuna.load_study(study_name="finetune-k2", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(t.params.keys() == {"lr"} for t in study.trials)  # lr is all finetune searches
    best = resolve_config(out / "best.toml")
    assert best["learners"]["finetune"]["steps"] == 3
    assert best["learners"]["finetune"]["lr"] == pytest.approx(study.best_trial.params["lr"])
    assert TunedFrom.read(best["tuned_from"]).text.startswith(
        f"finetune-k2 @ {storage} trial #{study.best_trial.number}"
    )
    # best.toml drives a benchmark run; its rows carry tuned_from.
    run_out = tmp_path / "bench"
    assert (
        main(
            [
                "run",
                "--config",
                str(out / "best.toml"),
                "--shots",
                "2",
                "--learners",
                "finetune",
                "--seeds",
                "1",
                "--out",
                str(run_out),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = json.loads((run_out / "leaderboard.json").read_text())["rows"]
    assert (
        rows and rows[0]["learner"] == "finetune" and rows[0]["tuned_from"] == TunedFrom.read(best["tuned_from"]).text
    )
    assert "tuned (finetune-k2 @" in (run_out / "leaderboard.md").read_text()
    print(f"tiny tune + resume + run: {time.perf_counter() - t0:.1f} s")


def test_storage_rejects_non_urls(tmp_path):
    with pytest.raises(ValueError, match="not a database URL"):
        make_storage(str(tmp_path / "study.db"))


def test_search_spaces_suggest_each_name_once(recwarn):
    """Optuna keeps the first range of a name suggested twice and only warns: a subclass that
    re-suggests a parent's name with another range would silently search the parent's."""
    for name in learners.available():
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = study.ask()
        learners.get(name).search_space(trial)
    inconsistent = [str(w.message) for w in recwarn.list if "Inconsistent parameter values" in str(w.message)]
    assert not inconsistent, inconsistent
