"""Cells in worker processes (`--jobs`), and the shared model cache they rely on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

from fewshot_transfer.cli import main
from fewshot_transfer.commands.run import build_config, register
from fewshot_transfer.harness.parallel import physical_cores, producers_first, resolve_jobs
from fewshot_transfer.harness.store import CellSpec
from fewshot_transfer.training import ModelCache

from conftest import TINY

GRID = [
    *TINY,
    "--set",
    "train.steps=30",
    "--set",
    "run.threads=1",
    "--shots",
    "1,2,3",
    "--learners",
    "scratch,finetune",
    "--seeds",
    "2",
    "--no-progress",
]


def _cells(run_dir) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "cells").glob("*.json"))}


def test_cache_stores_training_seconds_and_reports_them_per_cell(tmp_path):
    cache = ModelCache(tmp_path)
    cache.begin_cell()
    state = {"w": torch.ones(3)}
    cache.get_or_train("source", {"seed": 0}, lambda: (time.sleep(0.05), state)[1])
    cache.get_or_train("meta-maml", {"seed": 0}, lambda: state)
    trained = cache.cell_costs()
    assert set(trained) == {"source", "meta-maml"} and trained["source"] >= 0.05
    sidecar = json.loads(cache.path("source", {"seed": 0}).with_suffix(".json").read_text())
    assert sidecar == {"kind": "source", "train_s": trained["source"]}

    cache.begin_cell()
    assert cache.cell_costs() == {}
    cache.get_or_train("source", {"seed": 0}, lambda: state)  # memory hit
    cache.get_or_train("source", {"seed": 0}, lambda: state)  # twice in one cell counts once
    assert cache.cell_costs() == {"source": trained["source"]}

    other = ModelCache(tmp_path)  # another process: a disk hit still reports the original cost
    other.begin_cell()
    assert torch.equal(other.get_or_train("source", {"seed": 0}, lambda: {"w": torch.zeros(3)})["w"], state["w"])
    assert other.cell_costs() == {"source": trained["source"]} and (other.hits, other.misses) == (1, 0)


def test_two_workers_needing_one_model_train_it_once(tmp_path):
    calls = []

    def train() -> dict:
        calls.append(1)
        time.sleep(0.3)  # let the other worker arrive while this one holds the entry's lock
        return {"w": torch.arange(4.0)}

    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda: results.append(ModelCache(tmp_path).get_or_train("source", {"s": 1}, train)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 2 and all(torch.equal(r["w"], torch.arange(4.0)) for r in results)
    assert not list(tmp_path.glob(".*.tmp"))


def test_jobs_resolution_and_order():
    assert resolve_jobs(0) == physical_cores() >= 1
    assert resolve_jobs(4, n_cells=2) == 2 and resolve_jobs(3) == 3
    cells = [CellSpec(s, k, str(k), n) for s in (0, 1) for n in ("scratch", "finetune") for k in (1, 5)]
    ordered = producers_first(cells)
    assert sorted(ordered) == sorted(cells)
    assert [(c.learner, c.seed, c.k) for c in ordered[:4]] == [
        ("scratch", 0, 1),
        ("scratch", 1, 1),
        ("finetune", 0, 1),
        ("finetune", 1, 1),
    ]


def test_jobs_flag_and_config_key(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert build_config(parser.parse_args(["run", "--jobs", "3"]))["run"]["jobs"] == 3
    assert build_config(parser.parse_args(["run"]))["run"]["jobs"] == 0


def test_jobs_2_killed_and_resumed_equals_jobs_1(tmp_path):
    """SIGKILL a `--jobs 2` run mid-grid, rerun it: one record per cell, same metrics as `--jobs 1`."""
    out = tmp_path / "j2"
    cmd = [sys.executable, "-m", "fewshot_transfer.cli", "run", *GRID, "--jobs", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "cells").glob("*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "cells").glob("*.json")))
    assert 2 <= done_before < 12, "the kill should land mid-grid"
    assert main(["run", *GRID, "--jobs", "2", "--out", str(out)]) == 0  # resume in this process
    assert main(["run", *GRID, "--jobs", "1", "--out", str(tmp_path / "j1")]) == 0
    two, one = _cells(out), _cells(tmp_path / "j1")
    assert sorted(two) == sorted(one) and len(two) == 12
    for name, rec in two.items():
        assert rec["status"] == one[name]["status"] == "ok"
        assert rec["metrics"] == one[name]["metrics"], name
        assert rec["provenance"]["device"] == "cpu" and rec["provenance"]["threads"] == 1
    rows = json.loads((out / "leaderboard.json").read_text())["rows"]
    assert len(rows) == 6 and all(r["n_seeds"] == 2 for r in rows)
    assert not list((out / "cells").glob(".*.tmp"))


def test_ctrl_c_stops_every_worker_and_keeps_finished_cells(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "fewshot_transfer.cli",
        "run",
        *GRID,
        "--set",
        "train.steps=200",
        "--jobs",
        "2",
        "--out",
        str(out),
    ]
    # Default SIGINT handling even when the test runner's own SIGINT is ignored (a background job).
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "cells").glob("*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    proc.wait(timeout=60)
    assert proc.returncode != 0
    finished = _cells(out)
    assert 1 <= len(finished) < 12 and all(r["status"] == "ok" for r in finished.values())
    time.sleep(0.5)
    assert _cells(out).keys() == finished.keys(), "a worker kept running after Ctrl-C"
    assert not list((out / "cells").glob(".*.tmp"))


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (the run, its fork server, workers)."""
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if tag.encode() in env.read_bytes():
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="needs Linux /proc to find the workers")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_only_the_run_stops_its_workers(tmp_path, sig):
    """`kill PID` / a scheduler's SIGTERM / SIGKILL reach the run's process, not its process group.

    Under forkserver the workers' OS parent is the fork server, which outlives the run while
    workers hold its liveness pipe: without the run-watch the workers went on computing.
    """
    out = tmp_path / "run"
    tag = f"FTBENCH_TEST_TAG={uuid.uuid4().hex}"
    cmd = [sys.executable, "-m", "fewshot_transfer.cli", "run", *GRID, "--set", "train.steps=100000"]  # hours
    cmd += ["--jobs", "2", "--out", str(out)]
    env = {**os.environ, tag.split("=")[0]: tag.split("=")[1]}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # generous: a loaded CI box can take minutes to start
    while time.time() < deadline and len(_tagged(tag)) < 4:  # run + fork server + 2 workers
        time.sleep(0.1)
    assert len(_tagged(tag)) >= 4, "the workers never started"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    deadline = time.time() + 120
    while time.time() < deadline and _tagged(tag):
        time.sleep(0.2)
    assert not _tagged(tag), f"processes outlived the run after signal {sig.name}"
    assert not list((out / "cells").glob(".*.tmp"))
