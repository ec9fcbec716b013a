"""Several workers on one Optuna storage: a shared study and a grid, each cell run once.

Every test runs against SQLite and against a throw-away PostgreSQL server (``pg_server``;
skipped with the printed reason only when no server binaries exist or it cannot start).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fewshot_transfer.cli import main
from fewshot_transfer.tuning.distributed import cells_by_id, claim_next, grid_study_name, work
from fewshot_transfer.tuning.storage import make_storage

import pg_server
from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pg_url():
    try:
        with pg_server.start() as url:
            yield url
    except pg_server.Unavailable as exc:
        print(f"\nPostgreSQL multi-worker tests skipped: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("pg_url")


def _spawn(code: str, *args: str) -> subprocess.Popen:
    # One torch thread per worker: two workers on two cores, no OpenMP spin-waiting.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"worker exited {p.returncode}:\n{out[-3000:]}"
        outs.append(out)
    return outs


CLAIM = """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    from fewshot_transfer.tuning.storage import make_storage
    from fewshot_transfer.tuning.distributed import claim_next
    storage = make_storage(sys.argv[1], heartbeat=None)
    sid = storage.get_study_id_from_name(sys.argv[2])
    got = []
    while (c := claim_next(storage, sid)) is not None:
        got.append(c[1].number)
    print(json.dumps(got))
"""


def test_claiming_a_queued_trial_is_exclusive(storage_url, tmp_path):
    """Two processes drain one queue: every trial is claimed exactly once.

    (Without ``BEGIN IMMEDIATE`` on SQLite this setup ran 4-8 of the 50 trials twice.)
    """
    name = f"claims-{tmp_path.name}"
    study = optuna.create_study(storage=make_storage(storage_url, heartbeat=None), study_name=name)
    for i in range(50):
        study.enqueue_trial({}, user_attrs={"i": i})
    outs = _finish([_spawn(CLAIM, storage_url, name) for _ in range(2)], timeout=120)
    claimed = [n for out in outs for n in json.loads(out.strip().splitlines()[-1])]
    dups = {n: c for n, c in collections.Counter(claimed).items() if c > 1}
    assert not dups, f"trials claimed twice: {dups}"
    assert sorted(claimed) == list(range(50))


WORKER = """
    import json, sys
    from fewshot_transfer.cli import main
    rc_tune = main(json.loads(sys.argv[1]))
    rc_grid = main(json.loads(sys.argv[2]))
    sys.exit(rc_tune or rc_grid)
"""


def test_two_workers_share_a_study_and_a_grid(storage_url, tmp_path):
    t0 = time.perf_counter()
    grid, study_name = f"g-{tmp_path.name}", f"s-{tmp_path.name}"
    assert (
        main(
            [
                "grid",
                "submit",
                "--storage",
                storage_url,
                "--grid",
                grid,
                *TINY,
                "--shots",
                "2",
                "--learners",
                "scratch,finetune",
                "--seeds",
                "2",
                "--out",
                str(tmp_path / "submit"),
            ]
        )
        == 0
    )
    procs = []
    for w in ("w1", "w2"):
        tune = [
            "tune",
            "finetune",
            *TINY,
            "--set",
            "learners.finetune.steps=3",
            "--shots",
            "2",
            "--episodes",
            "1",
            "--trials",
            "3",
            "--pruner",
            "none",
            "--storage",
            storage_url,
            "--study",
            study_name,
            "--out",
            str(tmp_path / w / "tune"),
            "--no-progress",
            "--heartbeat",
            "2",
            "--grace",
            "30",
        ]
        worker = [
            "worker",
            "--storage",
            storage_url,
            "--grid",
            grid,
            "--out",
            str(tmp_path / w / "grid"),
            "--heartbeat",
            "2",
            "--grace",
            "30",
        ]
        procs.append(_spawn(WORKER, json.dumps(tune), json.dumps(worker)))
    outs = _finish(procs)

    storage = make_storage(storage_url)
    # The study: 3 finished trials in all (a worker may finish the one it was in: at most 4).
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = collections.Counter(t.state for t in study.trials)
    assert 3 <= states[TrialState.COMPLETE] <= 4 and set(states) == {TrialState.COMPLETE}, states
    assert len({t.number for t in study.trials}) == len(study.trials)
    for w in ("w1", "w2"):
        assert (tmp_path / w / "tune" / "best.toml").is_file()
        split = json.loads((tmp_path / w / "tune" / "validation_split.json").read_text())
        assert split["validation"] == study.user_attrs["ftbench_tune"]["validation"]

    # The grid: 4 cells, each run by exactly one trial of one worker.
    gstudy = optuna.load_study(study_name=grid_study_name(grid), storage=storage)
    by_cell = cells_by_id(gstudy)
    assert len(by_cell) == 4
    for cid, trials in by_cell.items():
        assert [t.state for t in trials] == [TrialState.COMPLETE], (cid, trials)
        assert trials[0].user_attrs["record"]["cell_id"] == cid
    local = [{p.name for p in (tmp_path / w / "grid" / "cells").glob("*.json")} for w in ("w1", "w2")]
    assert not local[0] & local[1], f"cells computed by both workers: {local[0] & local[1]}"
    assert len(local[0] | local[1]) == 4

    # One leaderboard from the storage.
    merged = tmp_path / "merged"
    assert main(["grid", "collect", "--storage", storage_url, "--grid", grid, "--out", str(merged)]) == 0
    assert len(list((merged / "cells").glob("*.json"))) == 4
    rows = json.loads((merged / "leaderboard.json").read_text())["rows"]
    assert sorted(r["learner"] for r in rows) == ["finetune", "scratch"]
    assert all(r["n_seeds"] == 2 for r in rows)
    assert all(f"--out {merged}" in r["command"] for r in rows)
    print(f"{storage_url.split(':')[0]}: 2 workers, study + grid + collect in {time.perf_counter() - t0:.1f} s")
    assert all("worker done" in out for out in outs)


def test_dead_worker_cell_is_retried_and_resubmit_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    sub = [
        "grid",
        "submit",
        "--storage",
        url,
        "--grid",
        "g",
        *TINY,
        "--shots",
        "2",
        "--learners",
        "scratch",
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "submit"),
    ]
    assert main(sub) == 0
    # A worker claims the first cell, beats once, and dies.
    dead = make_storage(url, heartbeat=1, grace=1)
    sid = dead.get_study_id_from_name(grid_study_name("g"))
    trial_id, frozen = claim_next(dead, sid)
    dead.record_heartbeat(trial_id)
    time.sleep(2.2)
    counts = work(make_storage(url, heartbeat=1, grace=1), "g", tmp_path / "w")
    assert counts["ok"] == 2 and counts["error"] == 0
    study = optuna.load_study(study_name=grid_study_name("g"), storage=make_storage(url))
    by_cell = cells_by_id(study)
    retried = by_cell[frozen.user_attrs["cell_id"]]
    assert [t.state for t in retried] == [TrialState.FAIL, TrialState.COMPLETE]
    assert retried[1].system_attrs.get("failed_trial") == frozen.number
    assert all(sum(t.state == TrialState.COMPLETE for t in ts) == 1 for ts in by_cell.values())
    # Submitting the same grid again enqueues nothing; another config is refused.
    n = len(study.trials)
    assert main(sub) == 0
    assert len(optuna.load_study(study_name=grid_study_name("g"), storage=make_storage(url)).trials) == n
    assert main([*sub, "--set", "train.lr=0.01"]) == 1
