"""The harness end to end: CLI run, leaderboard files, paired support sets, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fewshot_transfer.cli import main
from fewshot_transfer.config import resolve_config, run_identity
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.harness.planning import resolve_seeds
from fewshot_transfer.harness.runner import plan_cells
from fewshot_transfer.metrics import INFNET_KEYS
from fewshot_transfer.provenance import code_version

from conftest import TINY


def _overrides(args: list[str]) -> list[str]:
    return [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--set"]


def test_cli_run_writes_leaderboard(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "run",
            *TINY,
            "--shots",
            "1,3",
            "--learners",
            "scratch,source-only,finetune,joint",
            "--seeds",
            "2",
            "--out",
            str(out),
            "--plots",
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "scratch" in printed and "finetune" in printed
    for name in (
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.json",
        "transfer_gain.png",
        "config.toml",
        "split.json",
    ):
        assert (out / name).is_file(), name
    assert list(out.glob("gallery_k-*.png"))
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    # 4 learners x 2 k; source-only (k-independent) is shown at both k.
    assert sorted((r["learner"], r["k_label"]) for r in rows) == sorted(
        (n, k) for n in ("scratch", "source-only", "finetune", "joint") for k in ("1", "3")
    )
    for r in rows:
        assert r["n_seeds"] == 2
        assert "ftbench run --config" in r["command"]
        assert 0 < r["true_fraction"] < 0.5
    cells = list((out / "cells").glob("*.json"))
    assert len(cells) == 2 * (3 * 2 + 1)
    # Rerun: nothing recomputed, same leaderboard.
    before = {p.name: p.stat().st_mtime_ns for p in cells}
    assert (
        main(
            [
                "run",
                *TINY,
                "--shots",
                "1,3",
                "--learners",
                "scratch,source-only,finetune,joint",
                "--seeds",
                "2",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == before
    # Re-render / merge.
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "merged")]) == 0
    tables, listing = (tmp_path / "merged" / "leaderboard.md").read_text().split("## Selected hyperparameters")
    assert tables.count("| scratch |") == 2
    # The listing of the hyperparameters each learner ran with, per k (here: code defaults).
    assert listing.count("| scratch |") == 2 and "| defaults | lr 0.006 | code defaults |" in listing
    # Re-rendering in place keeps the run's description but names the code that rendered it.
    meta = json.loads((out / "leaderboard.json").read_text())["meta"]
    meta["code (this render)"] = {"git": "an-older-commit"}
    (out / "leaderboard.json").write_text(json.dumps({"meta": meta, "rows": []}))
    assert main(["leaderboard", str(out)]) == 0
    assert json.loads((out / "leaderboard.json").read_text())["meta"]["code (this render)"] == code_version()


def test_support_sets_are_paired_and_nested(tmp_path):
    cfg = resolve_config(None, _overrides(TINY) + ["run.shots='1,3'"])
    bench = prepare(cfg, tmp_path)
    s1, s3 = bench.support_set(1, 0), bench.support_set(3, 0)
    assert set(s1.patients) <= set(s3.patients)
    assert (s1.images[0] == s3.images[0]).all()
    from fewshot_transfer import learners

    a = bench.context(learners.get("scratch"), 3, 0).support
    b = bench.context(learners.get("finetune"), 3, 0).support
    assert (a.images == b.images).all() and (a.masks == b.masks).all()
    pools = [set(bench.support_pool.patients), set(bench.unlabeled_pool.patients), set(bench.test_set.patients)]
    assert not (pools[0] & pools[1]) and not (pools[0] & pools[2]) and not (pools[1] & pools[2])
    assert not bench.unlabeled_pool.labeled.any() and not bench.unlabeled_pool.masks.any()


def test_cells_seed_major_and_k_independent_once(tmp_path):
    cfg = resolve_config(None, _overrides(TINY) + ["run.shots='1,2'"])
    bench = prepare(cfg, tmp_path)
    cells = plan_cells(bench, ["scratch", "source-only"], resolve_seeds("2"))
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)
    assert sum(c.learner == "source-only" for c in cells) == 2


def test_resume_after_kill_has_one_row_per_cell(tmp_path):
    """Kill `ftbench run` mid-grid, rerun: every cell exactly once, none lost."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "fewshot_transfer.cli",
        "run",
        *TINY,
        "--set",
        "train.steps=30",
        "--shots",
        "1,2,3",
        "--learners",
        "scratch,finetune",
        "--seeds",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells_dir = out / "cells"
    deadline = time.time() + 600  # generous: a loaded CI box can take minutes to start
    while time.time() < deadline and len(list(cells_dir.glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(cells_dir.glob("*.json")))
    assert 2 <= done_before < 12, "the kill should land mid-grid"
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    files = sorted(p.name for p in cells_dir.glob("*.json"))
    assert len(files) == 12 and len(set(files)) == 12
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert len(rows) == 6 and all(r["n_seeds"] == 2 for r in rows)
    assert not list(cells_dir.glob(".*.tmp"))


def test_refuses_to_mix_configs(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            ["run", *TINY, "--shots", "1", "--learners", "scratch", "--seeds", "1", "--out", str(out), "--no-progress"]
        )
        == 0
    )
    rc = main(
        [
            "run",
            *TINY,
            "--set",
            "train.steps=6",
            "--shots",
            "1",
            "--learners",
            "scratch",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 1
    assert "train.steps" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--learners", "nope"], "unknown learner 'nope'"),
        (["--shots", "abc"], "abc"),
        (["--shots", "100000"], "exceeds"),
        (["--device", "cuda:7"], "cuda"),
    ],
)
def test_bad_run_arguments(tmp_path, capsys, argv, match):
    import torch

    if "cuda:7" in argv and torch.cuda.is_available():
        pytest.skip("CUDA present")
    rc = main(["run", *TINY, "--seeds", "1", "--out", str(tmp_path / "r"), "--no-progress", *argv])
    assert rc == 1
    assert match in capsys.readouterr().err


def test_infnet_metric_set_is_stored_and_shown_when_asked(tmp_path, capsys):
    """Every cell stores the Inf-Net set; `--metrics infnet` (run or leaderboard) shows it beside Dice at 0.5."""
    out = tmp_path / "run"
    base = ["run", *TINY, "--shots", "2", "--learners", "scratch", "--seeds", "1", "--no-progress"]
    assert main([*base, "--out", str(out)]) == 0
    assert "Inf-Net evaluation" not in capsys.readouterr().out
    assert "Inf-Net evaluation" not in (out / "leaderboard.md").read_text()
    (cell,) = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    for key in INFNET_KEYS:
        assert 0.0 <= cell["metrics"][key] <= 1.0, key
    row = json.loads((out / "leaderboard.json").read_text())["rows"][0]
    assert row["infnet_mean_dice"] == cell["metrics"]["infnet_mean_dice"]

    assert main(["leaderboard", str(out), "--metrics", "infnet"]) == 0
    printed = capsys.readouterr().out
    assert "Inf-Net evaluation" in printed and "meanDic" in printed
    md = (out / "leaderboard.md").read_text()
    assert "| learner | Dice@0.5 | meanDic | maxDic | adpDic | meanSen | meanSpe | MAE | n |" in md
    assert f"{cell['metrics']['infnet_mean_dice']:.3f}" in md

    other = tmp_path / "with-key"
    assert main([*base, "--out", str(other), "--metrics", "infnet"]) == 0
    assert "Inf-Net evaluation" in (other / "leaderboard.md").read_text()
    assert resolve_config(other / "config.toml")["eval"]["metrics"] == ["infnet"]
    # Shown metrics are no part of what a run measures: the same run directory accepts both.
    assert run_identity(resolve_config(other / "config.toml")) == run_identity(resolve_config(out / "config.toml"))
    assert main([*base, "--out", str(out), "--metrics", "infnet"]) == 0
    capsys.readouterr()
    assert main(["leaderboard", str(out), "--metrics", "nope"]) == 1
    assert "unknown metric set(s) ['nope']" in capsys.readouterr().err


@pytest.mark.integration
def test_fold_runs_pool_with_fold_and_seed_as_the_unit(tmp_path, capsys):
    """scripts/run_folds.sh writes one run per fold; `leaderboard --folds` pairs fold f's seed s with
    itself only (2 folds x 2 seeds = 4 units), where a plain merge would keep one fold's cells."""
    folds = []
    for f in range(2):
        folds.append(tmp_path / f"fold{f}")
        args = ["run", *TINY, "--shots", "1", "--learners", "scratch,finetune", "--seeds", "2", "--no-progress"]
        args += ["--set", "data.split.folds=2", "--set", f"data.split.fold={f}", "--out", str(folds[-1])]
        assert main(args) == 0
    assert main(["leaderboard", *map(str, folds), "--folds", "--out", str(tmp_path / "pooled")]) == 0
    board = json.loads((tmp_path / "pooled" / "leaderboard.json").read_text())
    rows = {r["learner"]: r for r in board["rows"]}
    assert rows["finetune"]["n_seeds"] == 4 and rows["scratch"]["n_seeds"] == 4
    assert board["meta"]["pairing unit"].startswith("fold × seed: 4 units (2 folds × seeds 0, 1)")
    cells = {
        (f, json.loads(p.read_text())["seed"]): json.loads(p.read_text())["metrics"]["dice"]
        for f, d in enumerate(folds)
        for p in (d / "cells").glob("finetune*.json")
    }
    assert rows["finetune"]["dice"] == pytest.approx(sum(cells.values()) / 4)
    assert main(["leaderboard", *map(str, folds), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "leaderboard.json").read_text())
    assert {r["learner"]: r["n_seeds"] for r in merged["rows"]}["finetune"] == 2
    assert main(["leaderboard", str(folds[0]), str(folds[0]), "--folds", "--out", str(tmp_path / "x")]) == 1
    assert "each run must hold one fold" in capsys.readouterr().err
