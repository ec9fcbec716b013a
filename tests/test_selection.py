"""Model selection under ``--protocol tuned``: own draws per study, resume without repeats, the
rules ``val`` / ``shots`` / ``source-val`` / ``oracle`` named in every row, LaTeX output."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from test_tuning import ThresholdLearner, _overrides

from fewshot_transfer import learners
from fewshot_transfer.cli import main
from fewshot_transfer.config import DEFAULT_LEARNERS, config_at_k, resolve_config
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.harness.latex import escape, spread, to_latex
from fewshot_transfer.harness.selection import applied_rule, caveat
from fewshot_transfer.learners.base import REGISTRY
from fewshot_transfer.plan import TunedFrom
from fewshot_transfer.tuning.study import make_sampler, study_seed, trial_config
from fewshot_transfer.tuning.validation import fold_of_shots, selection_split

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def threshold_learner():
    REGISTRY[ThresholdLearner.name] = ThresholdLearner
    yield ThresholdLearner
    REGISTRY.pop(ThresholdLearner.name, None)


def test_sampler_seeds_are_stable_and_distinct_across_learners_and_k():
    names = DEFAULT_LEARNERS.split(",") + ["adaptseg", "maml", "mean-teacher"]
    seeds = {(n, k): study_seed(n, k) for n in names for k in ("0", "1", "5", "20")}
    assert len(set(seeds.values())) == len(seeds)
    # Not Python's salted hash(): another interpreter with another hash seed derives the same.
    code = "from fewshot_transfer.tuning.study import study_seed; print(study_seed('dual-adv', '5'))"
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == seeds[("dual-adv", "5")]


def _objective(trial) -> float:
    return trial.suggest_float("lr", 1e-4, 1e-2, log=True) + trial.suggest_int("d_steps", 1, 3)


def test_a_resumed_study_continues_the_draws_instead_of_repeating_them(tmp_path):
    """The old bug: a new process re-created the sampler with the same seed and drew #0.. again."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    whole = optuna.create_study(sampler=make_sampler(7))
    whole.optimize(_objective, n_trials=6)
    first = optuna.create_study(storage=url, study_name="s", sampler=make_sampler(7))
    first.optimize(_objective, n_trials=3)
    resumed = optuna.load_study(storage=url, study_name="s", sampler=make_sampler(7))  # a fresh process
    resumed.optimize(_objective, n_trials=3)
    params = [t.params for t in sorted(resumed.trials, key=lambda t: t.number)]
    assert params == [t.params for t in whole.trials]
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 6
    other = optuna.create_study(sampler=make_sampler(8))
    other.optimize(_objective, n_trials=1)
    assert other.trials[0].params != whole.trials[0].params


def _tuned_run(tmp_path, rule: str, *extra: str) -> Path:
    out = tmp_path / f"selection-{rule}"  # the layout scripts/compare_selection.py reads
    args = [
        "run",
        *TINY,
        "--protocol",
        "tuned",
        "--selection",
        rule,
        "--learners",
        "test-threshold,source-only",
        "--shots",
        "1,2",
        "--seeds",
        "2",
        "--trials",
        "2",
        "--tune-episodes",
        "1",
        "--jobs",
        "1",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]
    assert main(args) == 0
    return out


def _finished(study) -> list:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.integration
def test_killed_tuned_run_resumes_its_orphan_and_never_repeats_a_draw(tmp_path, threshold_learner):
    """What ``ftbench run --protocol tuned`` runs first: stopped after one trial with a second one
    in flight (SIGKILL leaves it RUNNING, its draw made), then rerun with a larger budget."""
    from fewshot_transfer.tuning.protocol import tune_learners

    names = ["test-threshold", "finetune"]
    base = _overrides(TINY) + ['run.shots="2"', "run.tune_episodes=1", "run.jobs=1", 'run.protocol="tuned"']
    tune_learners(resolve_config(None, [*base, "run.trials=1"]), names, tmp_path, show_progress=False)
    url = f"sqlite:///{tmp_path / 'tuning' / 'study.db'}"
    study = optuna.load_study(study_name="test-threshold-k2", storage=url)
    orphan = study.ask()
    ThresholdLearner.search_space(orphan)
    tuned, _ = tune_learners(resolve_config(None, [*base, "run.trials=3"]), names, tmp_path, show_progress=False)
    study = optuna.load_study(study_name="test-threshold-k2", storage=url)
    assert {t.number: t for t in study.trials}[orphan.number].state == TrialState.FAIL
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == orphan.params
    for name in names:
        finished = _finished(optuna.load_study(study_name=f"{name}-k2", storage=url))
        assert len(finished) == 3
        assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == 3, f"{name}: a draw was repeated"
    seeds = {
        s.study_name: s.user_attrs["ftbench_tune"]["sampler_seed"] for s in optuna.get_all_study_summaries(storage=url)
    }
    assert seeds == {f"{n}-k2": study_seed(n, "2") for n in names} and len(set(seeds.values())) == 2
    assert TunedFrom.read(tuned["tuned_from"]).studies[-1].sampler_seed == seeds["finetune-k2"]
    assert f"sampler seed {seeds['finetune-k2']}" in TunedFrom.read(tuned["tuned_from"]).text
    assert set(tuned["learners"]) >= {"test-threshold@k=2", "finetune@k=2"}


@pytest.mark.integration
def test_every_rule_is_reachable_from_run_and_named_in_every_row(tmp_path, threshold_learner, capsys):
    outs = {rule: _tuned_run(tmp_path, rule, "--trials", "3") for rule in ("val", "shots", "source-val", "oracle")}
    for rule, out in outs.items():
        rows = [r for r in json.loads((out / "leaderboard.json").read_text())["rows"] if r["applicable"]]
        got = {(r["learner"], r["k"]): r["selection_rule"] for r in rows}
        assert got[("source-only", 1)] == "defaults" and got[("source-only", 2)] == "defaults"
        assert got[("test-threshold", 2)] == rule
        assert got[("test-threshold", 1)] == ("defaults" if rule == "shots" else rule)
        cfg = resolve_config(out / "config.toml")
        assert cfg["run"]["selection"] == rule
        tuned = cfg["learners"]["test-threshold@k=2"]["t"]
        cells = [json.loads(p.read_text()) for p in (out / "cells").glob("test-threshold__k-2__*.json")]
        assert cells and all(c["params"]["t"] == tuned for c in cells), "k = 2 cells must use the k = 2 study"
        assert all(c["selection_rule"] == rule for c in cells)
        md = (out / "leaderboard.md").read_text()
        assert ("**ORACLE** (test set)" in md) == (rule == "oracle")
        assert ("ORACLE" in md) == (rule == "oracle")
    oracle = json.loads((outs["oracle"] / "leaderboard.json").read_text())
    assert "TEST SET" in oracle["meta"]["ORACLE"]
    capsys.readouterr()
    merged = tmp_path / "merged"
    assert main(["leaderboard", *map(str, outs.values()), "--out", str(merged), "--latex", "--interval", "se"]) == 0
    shown = capsys.readouterr().out
    assert "ORACLE" in shown
    rows = json.loads((merged / "leaderboard.json").read_text())["rows"]
    names = {r["learner"] for r in rows}
    assert {f"test-threshold [{r}]" for r in outs} <= names
    row = next(r for r in rows if r["learner"] == "test-threshold [shots]" and r["k"] == 2)
    assert row["gain_ref"] == "scratch [shots]"  # each rule's gain is against its own reference
    tex = (merged / "leaderboard.tex").read_text()
    assert "\\toprule" in tex and "test-threshold [oracle]" in tex and "ORACLE" in tex and "standard error" in tex
    # The rules' report: every rule's k = 2 row, the compute read from the trials and cells, what each score rewarded.
    spec = importlib.util.spec_from_file_location("compare_selection", ROOT / "scripts" / "compare_selection.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path), "--rules", ",".join(outs), "--report-only"]) == 0
    report = (tmp_path / "selection.md").read_text()
    assert "## k = 2" in report and "Kendall" not in report  # two learners: too few for a rank correlation
    tuning_s, grid_s = script.work_seconds(outs["val"], script.studies(outs["val"]))
    assert tuning_s > 0 and grid_s > 0
    for rule in outs:
        assert f"{rule} {script.work_seconds(outs[rule], script.studies(outs[rule]))[0]:.0f} tuning" in report
        assert f"| {rule} | test-threshold-k2" in report and "| 3 | — | — | t (" in report


def test_shots_rule_folds_hold_out_half_of_the_shots(tmp_path):
    cfg = resolve_config(None, _overrides(TINY) + ['run.shots="4"'])
    bench = prepare(cfg, tmp_path)
    split = selection_split(bench, "shots", "4")
    shots = bench.support_set(4, 0)
    fits = split.episode(0)
    assert [f.tag for f in fits] == ["fold0", "fold1"]
    held = [set(map(tuple, f.bench.test_set.images.reshape(len(f.bench.test_set), -1)[:, :8].tolist())) for f in fits]
    all_shots = set(map(tuple, shots.images.reshape(len(shots), -1)[:, :8].tolist()))
    assert held[0] | held[1] == all_shots and not held[0] & held[1]
    for f, h in zip(fits, held):
        train = f.bench.support_set(f.k, 0)
        assert f.k == len(shots) - len(f.bench.test_set) and len(train) == f.k
        seen = set(map(tuple, f.bench.support_pool.images.reshape(len(f.bench.support_pool), -1)[:, :8].tolist()))
        assert not h & seen, "a held-out shot must be in no pool the learner sees"
    assert list(fold_of_shots(np.array(["a", "b", "a", "c"]))) == [0, 1, 0, 0]
    assert list(fold_of_shots(np.array(["a", "a", "a"]))) == [0, 1, 0]
    assert applied_rule("shots", 1) == "defaults" and applied_rule("shots", 0) == "source-val"
    with pytest.raises(ValueError, match="nothing to score at k = 1"):
        selection_split(bench, "shots", "1")
    src = selection_split(bench, "source-val", "0")
    assert src.k == 0 and src.episode(0)[0].bench.test_set is not bench.test_set
    assert selection_split(bench, "oracle", "2").info["scored_on"].startswith("ORACLE")


def test_config_at_k_and_latex_formatting():
    cfg = {"learners": {"finetune": {"steps": 3}, "finetune@k=5": {"lr": 0.01}}}
    assert config_at_k(cfg, "finetune", 5)["learners"]["finetune"] == {"steps": 3, "lr": 0.01}
    assert config_at_k(cfg, "finetune", 1) is cfg
    # A trial's draw is never overridden by the per-k table of an earlier tuned run's config.
    assert trial_config(cfg, "finetune", {"lr": 0.5})["learners"] == {"finetune": {"steps": 3, "lr": 0.5}}
    learners.get("finetune").resolve_params({**resolve_config(None), **config_at_k(cfg, "finetune", 5)})
    assert escape("a_b 25% & {x}") == r"a\_b 25\% \& \{x\}"
    assert spread(0.4, 0.6, 5, "ci") == pytest.approx(0.1)
    assert spread(0.4, 0.6, 5, "se") == pytest.approx(0.1 / 2.7764451, rel=1e-5)
    assert math.isnan(spread(math.nan, math.nan, 1, "se"))
    row = {
        "learner": "my_net",
        "k": 5,
        "k_label": "25%",
        "rank": 1,
        "dice": 0.5,
        "dice_lo": 0.4,
        "dice_hi": 0.6,
        "gain": -0.1,
        "gain_lo": -0.2,
        "gain_hi": 0.0,
        "gain_ref": "scratch",
        "n_seeds": 5,
        "selection_rule": "oracle",
    }
    tex = to_latex([row])
    assert r"my\_net & \textbf{ORACLE}$^\dagger$ & 0.500 $\pm$ 0.100 & $-$0.100 $\pm$ 0.100 & 5 \\" in tex
    assert r"\label{tab:ftbench-k25pct}" in tex and "test set" in tex
    with pytest.raises(ValueError, match="--interval"):
        to_latex([row], interval="sd")


SLOW_PLUGIN = '''
import os
import time
from pathlib import Path

from fewshot_transfer import register
from test_tuning import ThresholdLearner


@register
class Slow(ThresholdLearner):
    """The threshold learner whose fit number FT_BLOCK_AT hangs, so the test can kill the study there."""

    name = "test-slow"

    def fit(self, ctx):
        marks = Path(os.environ["FT_MARKS"])
        n = len(list(marks.iterdir()))
        (marks / f"fit-{n}").write_text(repr(float(ctx.params["t"])))
        if os.environ.get("FT_BLOCK_AT") and n >= int(os.environ["FT_BLOCK_AT"]):
            time.sleep(600)
        return super().fit(ctx)
'''


@pytest.mark.integration
def test_sigkilled_tune_resumes_without_repeating_a_draw(tmp_path):
    """A real kill: ``ftbench tune`` SIGKILLed inside its third trial, then the same command again."""
    import time

    plugin = tmp_path / "slow_learner.py"
    plugin.write_text(SLOW_PLUGIN)
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "tune"
    argv = [sys.executable, "-m", "fewshot_transfer.cli", "tune", "test-slow", "--plugin", str(plugin), *TINY]
    argv += ["--shots", "2", "--episodes", "1", "--trials", "4", "--heartbeat", "0", "--pruner", "none"]
    argv += ["--no-progress", "--out", str(out)]
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])  # the plugin reuses test_tuning's learner
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "FT_MARKS": str(marks)}
    proc = subprocess.Popen(argv, env={**env, "FT_BLOCK_AT": "2"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not (marks / "fit-2").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the study never reached its third trial"
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    url = f"sqlite:///{out / 'study.db'}"
    killed = optuna.load_study(study_name="test-slow-k2", storage=url)
    running = [t for t in killed.trials if t.state == TrialState.RUNNING]
    assert len(running) == 1 and len(_finished(killed)) == 2
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    study = optuna.load_study(study_name="test-slow-k2", storage=url)
    finished = _finished(study)
    assert len(finished) == 4 and len({t.params["t"] for t in finished}) == 4, "a resumed study repeated a draw"
    assert {t.number: t for t in study.trials}[running[0].number].state == TrialState.FAIL
    assert any(t.user_attrs.get("retry_of") == running[0].number for t in finished)
    assert float((marks / "fit-2").read_text()) in {t.params["t"] for t in finished}, "the killed draw was lost"


def test_a_control_row_takes_its_learners_per_k_parameters(tmp_path):
    """``NAME-control`` runs with NAME's parameters; under a study per k, NAME's at that k."""
    cfg = resolve_config(None, _overrides(TINY) + ['run.shots="2"'])
    cfg["learners"]["dual-adv@k=2"] = {"lr": 0.0042}  # as --protocol tuned writes it into config.toml
    bench = prepare(cfg, tmp_path)
    control = learners.get("dual-adv-control")
    assert bench.context(control, 2, 0).params["lr"] == 0.0042
    assert bench.context(learners.get("dual-adv"), 2, 0).params["lr"] == 0.0042
    assert bench.context(control, 0, 0).params["lr"] == learners.get("dual-adv").defaults["lr"]


@pytest.mark.integration
def test_tune_selection_oracle_is_marked_in_best_toml(tmp_path, threshold_learner, capsys):
    out = tmp_path / "tune"
    args = ["tune", "test-threshold", *TINY, "--shots", "2", "--episodes", "1", "--trials", "2", "--top", "1"]
    assert main([*args, "--selection", "oracle", "--no-progress", "--out", str(out)]) == 0
    best = (out / "best.toml").read_text()
    assert "# ORACLE: these values were selected on the TEST SET" in best and "Selection rule: oracle" in best
    assert resolve_config(out / "best.toml")["run"]["selection"] == "oracle"
    assert "ORACLE" in capsys.readouterr().out
    study = optuna.load_study(study_name="test-threshold-k2-oracle", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["ftbench_tune"]["selection"] == "oracle"


def test_a_control_row_is_never_tuned_itself():
    from fewshot_transfer.harness.planning import run_plan
    from fewshot_transfer.tuning.protocol import plan_studies

    cfg = resolve_config(None, _overrides(TINY) + ['run.shots="0,2"'])
    tasks, skipped = plan_studies(run_plan(cfg), ["dual-adv", "dual-adv-control"], [("0", 0), ("2", 2)])
    assert {t.learner for t in tasks} == {"dual-adv"}
    assert "control arm of dual-adv" in skipped["dual-adv-control"]


def test_source_val_warns_where_it_selects_for_the_source_task(caplog):
    from fewshot_transfer.harness.planning import run_plan
    from fewshot_transfer.tuning.protocol import plan_studies

    assert caveat("source-val", 0) == "" and caveat("val", 5) == "" and caveat("shots", 5) == ""
    assert "k = 0 only" in caveat("source-val", 5)
    for shots, warned in (([("0", 0)], False), ([("0", 0), ("2", 2)], True)):
        caplog.clear()
        cfg = resolve_config(None, _overrides(TINY) + ['run.selection="source-val"'])
        with caplog.at_level("WARNING", logger="fewshot_transfer.tuning.protocol"):
            plan_studies(run_plan(cfg), ["finetune", "dual-adv"], shots)
        assert any("source-val at k = 2" in r.getMessage() for r in caplog.records) is warned
