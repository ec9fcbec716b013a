"""``grid submit --launch``: workers started through submitit, without a cluster.

Slurm: a stand-in ``sbatch`` records the submission script submitit generates (array size,
resources, command) instead of submitting it. Local: submitit's LocalExecutor runs a tiny
grid to completion on SQLite, one worker is killed in the middle of a cell, its cell is
re-queued, and the collected leaderboard equals the one ``ftbench run`` makes of the grid.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fewshot_transfer.cli import main
from fewshot_transfer.tuning.cluster import WorkerJob
from fewshot_transfer.tuning.distributed import cells_by_id, grid_study_name
from fewshot_transfer.tuning.storage import make_storage

from conftest import TINY

pytest.importorskip("submitit")

GRID = ["--shots", "2", "--learners", "scratch,finetune", "--seeds", "2"]


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """``sbatch`` that copies the script it is given and answers like Slurm; ``srun`` to be found."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    captured = tmp_path / "captured.sbatch"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {captured}\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for name in ("sbatch", "srun"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return captured


def test_slurm_submission_is_one_array_of_workers(tmp_path, monkeypatch, capsys):
    captured = _fake_slurm(tmp_path, monkeypatch)
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    out = tmp_path / "grid"
    rc = main(
        [
            "grid",
            "submit",
            "--storage",
            url,
            "--grid",
            "g",
            *TINY,
            *GRID,
            "--out",
            str(out),
            "--launch",
            "slurm",
            "--workers",
            "3",
            "--slurm-partition",
            "gpu",
            "--slurm-time",
            "120",
            "--slurm-cpus",
            "4",
            "--slurm-mem",
            "16G",
            "--slurm-setup",
            "source /opt/ftbench/.venv/bin/activate",
        ]
    )
    assert rc == 0
    script = captured.read_text()
    for line in (
        "#SBATCH --array=0-2%3",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=120",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16G",
        "#SBATCH --job-name=ftbench-g",
        "source /opt/ftbench/.venv/bin/activate",
    ):
        assert line in script, f"{line!r} not in\n{script}"
    assert "srun" in script and "-m submitit.core._submit" in script and str(out / "launch") in script
    assert "%A_%a" in script  # one log per array task
    # What each array task runs: a worker of this grid on this storage, its own index.
    pickles = sorted((out / "launch").glob("4242_*_submitted.pkl"))
    assert len(pickles) == 3
    with open(pickles[1], "rb") as fh:
        delayed = pickle.load(fh)
    assert delayed.function == WorkerJob(storage=url, grid="g", out=str(out.resolve()))
    assert delayed.args == (1,)
    assert "submitted 3 workers to Slurm" in capsys.readouterr().out


def _comparable(rows: list[dict]) -> list[dict]:
    """Leaderboard rows less what depends on where and how long a cell ran."""
    drop = {"command", "cost_s", "charged_s"}
    out = []
    for r in sorted(rows, key=lambda r: (r["k_label"], r["learner"])):
        out.append({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items() if k not in drop})
    return out


def _grid_exists(db: Path) -> bool:
    """Whether ``grid submit`` has created the grid (read with sqlite3: opening the storage with
    Optuna while the submit creates its tables would race it)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            names = [row[0] for row in con.execute("SELECT study_name FROM studies")]
    except sqlite3.Error:
        return False
    return grid_study_name("local") in names


def _stop_a_worker_mid_cell(db: Path, deadline: float) -> tuple[int, str]:
    """SIGSTOP the worker of the first RUNNING cell (so it cannot finish it), then SIGKILL it."""
    while not _grid_exists(db):
        assert time.time() < deadline, "the grid was never submitted"
        time.sleep(0.2)
    storage = make_storage(f"sqlite:///{db}", heartbeat=None)
    study = optuna.load_study(study_name=grid_study_name("local"), storage=storage)
    while time.time() < deadline:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker")
            if not worker:
                continue
            pid = int(worker.rsplit(":", 1)[1])
            os.kill(pid, signal.SIGSTOP)
            state = storage.get_trial(t._trial_id).state
            if state == TrialState.RUNNING:
                os.kill(pid, signal.SIGKILL)
                return pid, t.user_attrs["cell_id"]
            os.kill(pid, signal.SIGCONT)  # it finished that cell just before: try the next
        time.sleep(0.1)
    raise AssertionError("no worker was ever seen inside a cell")


def _kill_workers(db: Path) -> None:
    """Leave no worker behind when the test fails: SIGKILL the worker processes the grid names."""
    if not _grid_exists(db):
        return
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT value_json FROM trial_user_attributes WHERE key = 'worker'").fetchall()
    for (value,) in rows:
        try:
            os.kill(int(json.loads(value).rsplit(":", 1)[1]), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@pytest.mark.integration
def test_local_workers_finish_a_grid_and_requeue_a_killed_workers_cell(tmp_path):
    t0 = time.perf_counter()
    run = tmp_path / "run"
    assert main(["run", *TINY, *GRID, "--jobs", "1", "--out", str(run), "--no-progress"]) == 0

    url = f"sqlite:///{tmp_path / 'grid.db'}"
    out = tmp_path / "grid"
    submit = ["grid", "submit", "--storage", url, "--grid", "local", *TINY, *GRID, "--out", str(out)]
    launch = ["--launch", "local", "--workers", "2", "--heartbeat", "1", "--grace", "4"]
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(rc=main([*submit, *launch])), daemon=True)
    thread.start()
    try:
        pid, killed_cell = _stop_a_worker_mid_cell(tmp_path / "grid.db", time.time() + 400)
        thread.join(timeout=600)
        assert not thread.is_alive(), "the workers did not finish the grid"
    except BaseException:
        _kill_workers(tmp_path / "grid.db")
        raise
    assert result["rc"] == 1  # one worker died; the other finished the grid
    logs = list((out / "launch").glob("*_log.out"))
    assert len(logs) == 2

    study = optuna.load_study(study_name=grid_study_name("local"), storage=make_storage(url))
    by_cell = cells_by_id(study)
    assert len(by_cell) == 4
    assert [t.state for t in by_cell[killed_cell]] == [TrialState.FAIL, TrialState.COMPLETE]
    assert by_cell[killed_cell][0].user_attrs["worker"].endswith(f":{pid}")
    assert all(sum(t.state == TrialState.COMPLETE for t in ts) == 1 for ts in by_cell.values())

    merged = tmp_path / "merged"
    assert main(["grid", "collect", "--storage", url, "--grid", "local", "--out", str(merged)]) == 0
    grid_rows = json.loads((merged / "leaderboard.json").read_text())["rows"]
    run_rows = json.loads((run / "leaderboard.json").read_text())["rows"]
    assert _comparable(grid_rows) == _comparable(run_rows)
    print(f"local submitit grid with a killed worker in {time.perf_counter() - t0:.1f} s")
