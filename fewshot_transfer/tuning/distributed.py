"""A benchmark grid executed by several workers through one Optuna RDB storage.

The storage is the work queue; no other service is needed:

* ``submit`` prepares the benchmark once, stores the resolved config, the patient split and
  the data fingerprint on a study named ``grid:NAME``, and enqueues one ``WAITING`` trial
  per cell (``study.enqueue_trial({}, user_attrs={cell_id, learner, k, k_label, seed})``),
  in the runner's seed-major order. Submitting again enqueues only cells that have no
  waiting, running or finished trial (so a grid can be extended with more learners/seeds).
* ``work`` (one per process / machine) claims a ``WAITING`` trial by switching it to
  ``RUNNING`` through the storage (``set_trial_state_values`` returns False when another
  worker got there first), runs ``run_cell`` while a heartbeat thread keeps the trial alive,
  stores the cell record in its local ``cells/`` folder *and* as the trial's ``record``
  user attribute, and ``tell``s the trial (value = test Dice). A worker that dies stops
  beating; after the grace period the next worker's ``fail_stale_trials`` marks the trial
  failed and the retry callback re-queues the cell.
* ``collect`` writes every recorded cell into one run directory and renders the leaderboard.

Why not ``study.ask()``: it pops a waiting trial the same way, but when the queue is empty
it *creates* a fresh trial, which a work queue would then have to discard. Claiming is
atomic on PostgreSQL (``SELECT ... FOR UPDATE`` row lock, then a state check) and on SQLite
only because :func:`fewshot_transfer.tuning.storage.make_storage` starts every transaction
with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
import warnings
from collections import defaultdict
from pathlib import Path

from fewshot_transfer.config import apply_overrides, config_hash, load_config_text, run_identity, to_toml
from fewshot_transfer.portable import pinned
from fewshot_transfer.tuning.storage import heartbeat_thread, jsonable, redact, worker_id

log = logging.getLogger(__name__)

GRID_ATTR = "ftbench_grid"
CELL_KEYS = ("cell_id", "learner", "k", "k_label", "seed")


def grid_study_name(grid: str) -> str:
    return f"grid:{grid}"


def _identity(cfg: dict) -> str:
    return config_hash(run_identity(cfg))


def load_grid(storage, grid: str):
    """``(study, config, attrs)`` of a submitted grid, with a clear error when there is none."""
    import optuna

    try:
        study = optuna.load_study(study_name=grid_study_name(grid), storage=storage)
    except KeyError:
        raise ValueError(
            f"no grid {grid!r} in {redact(storage.url)}; submit it first with `ftbench grid submit --grid {grid} ...`"
        ) from None
    attrs = study.user_attrs.get(GRID_ATTR)
    if not attrs:
        raise ValueError(f"study {grid_study_name(grid)!r} in {redact(storage.url)} is not an ftbench grid")
    return study, load_config_text(attrs["config_toml"]), attrs


def cells_by_id(study) -> dict[str, list]:
    """Trials of the grid grouped by the cell they run (trial-number order)."""
    out: dict[str, list] = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        cid = t.user_attrs.get("cell_id")
        if cid:
            out[cid].append(t)
    return out


def cell_state(trials: list) -> str:
    """``done`` / ``failed`` (recorded, e.g. diverged) / ``running`` / ``waiting`` / ``error``."""
    from optuna.trial import TrialState

    states = {t.state for t in trials}
    if any(t.state == TrialState.COMPLETE and "record" in t.user_attrs for t in trials):
        return "done"
    if any(t.state == TrialState.FAIL and "record" in t.user_attrs for t in trials):
        return "failed"
    if TrialState.RUNNING in states:
        return "running"
    if TrialState.WAITING in states:
        return "waiting"
    return "error"


def submit(storage, grid: str, cfg: dict, bench, cells, *, retry_failed: bool = False) -> dict:
    """Create/extend grid ``grid`` with ``cells``; returns counts of enqueued and skipped cells."""
    import optuna

    study = optuna.create_study(
        storage=storage, study_name=grid_study_name(grid), direction="maximize", load_if_exists=True
    )
    attrs = {
        "config_toml": to_toml(cfg),
        "config_hash": _identity(cfg),
        "split": bench.split.to_json(),
        "data": bench.data_fingerprint,
    }
    saved = study.user_attrs.get(GRID_ATTR)
    if saved is None:
        study.set_user_attr(GRID_ATTR, attrs)
    else:
        if saved["config_hash"] != attrs["config_hash"]:
            raise ValueError(
                f"grid {grid!r} in {redact(storage.url)} was submitted with a different configuration "
                "([data], [model], [train] or [learners] differ); use another --grid name"
            )
        if saved["data"] != attrs["data"] or saved["split"] != attrs["split"]:
            raise ValueError(
                f"grid {grid!r} was submitted with other data (fingerprint {saved['data']}, this machine has "
                f"{attrs['data']}); every machine must see the same datasets"
            )
    existing = cells_by_id(study)
    enqueued, skipped = 0, 0
    for spec in cells:
        trials = existing.get(spec.cell_id, [])
        state = cell_state(trials) if trials else None
        if state in ("done", "running", "waiting") or (state == "failed" and not retry_failed):
            skipped += 1
            continue
        study.enqueue_trial(
            {},
            user_attrs={
                "cell_id": spec.cell_id,
                "learner": spec.learner,
                "k": spec.k,
                "k_label": spec.k_label,
                "seed": spec.seed,
            },
        )
        enqueued += 1
    return {"enqueued": enqueued, "skipped": skipped, "study": study}


def claim_next(storage, study_id: int):
    """Atomically switch the oldest ``WAITING`` trial to ``RUNNING``; ``(trial_id, frozen)`` or None."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for ft in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, ft.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return trial_id, ft
        except UpdateFinishedTrialError:
            continue
    return None


def _fail_stale(study) -> None:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def work(
    storage,
    grid: str,
    out: Path,
    *,
    device: str | None = None,
    wait: bool = True,
    max_cells: int | None = None,
    console=None,
) -> dict:
    """Run queued cells of ``grid`` until none is left (or ``max_cells`` ran); returns counts."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from fewshot_transfer.data.splits import TargetSplit, save_split
    from fewshot_transfer.harness.rundir import check_run_dir, open_run
    from fewshot_transfer.harness.runner import run_cell
    from fewshot_transfer.harness.store import CellSpec, CellStore, atomic_write_text

    study, cfg, attrs = load_grid(storage, grid)
    if "run" not in run_identity(cfg) and pinned():  # a native grid: no run.portable in its identity
        raise ValueError(
            f"grid {grid!r} is native (not submitted with --portable): start its workers without --portable"
        )
    cfg = apply_overrides(
        cfg, [f"run.out={json.dumps(str(out))}", *([f"run.device={json.dumps(device)}"] if device else [])]
    )
    out = Path(out)
    check_run_dir(out, cfg)  # before the submitter's split is adopted into it
    split_path = out / "split.json"
    if not split_path.is_file():
        save_split(TargetSplit.from_json(attrs["split"]), split_path)
    # A portable grid's cells need the pinned settings from the worker's start (ftbench worker
    # --portable; open_run raises without them); a grid's plugins must import on every worker.
    bench = open_run(cfg, out, check=False, write_config=False)  # config.toml once the data match
    if bench.split.to_json() != attrs["split"] or bench.data_fingerprint != attrs["data"]:
        raise ValueError(
            f"this machine's data (fingerprint {bench.data_fingerprint}) or {split_path} differ from grid {grid!r}'s "
            f"({attrs['data']}); every worker must see the same datasets"
        )
    atomic_write_text(out / "config.toml", to_toml(cfg))
    store = CellStore(out)
    study_id = storage.get_study_id_from_name(study.study_name)
    me = worker_id()
    interval = storage.get_heartbeat_interval() or 10
    counts = {"ok": 0, "failed": 0, "error": 0, "reused": 0}
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        if console is not None:
            console.log(msg)
        else:
            log.info(msg)

    while max_cells is None or sum(counts.values()) - counts["reused"] < max_cells:
        _fail_stale(study)
        claimed = claim_next(storage, study_id)
        if claimed is None:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not wait or not running:
                break
            time.sleep(min(interval, 10))
            continue
        trial_id, ft = claimed
        spec = CellSpec(
            seed=int(ft.user_attrs["seed"]),
            k=int(ft.user_attrs["k"]),
            k_label=str(ft.user_attrs["k_label"]),
            learner=str(ft.user_attrs["learner"]),
        )
        t0 = time.perf_counter()
        record = None
        error, tb = None, ""
        with heartbeat_thread(storage, trial_id):
            try:
                storage.set_trial_user_attr(trial_id, "worker", me)
                record = store.load(spec)
                if record is not None and record.get("cell_id") == spec.cell_id:
                    counts["reused"] += 1  # a previous attempt finished the cell but died before telling
                else:
                    record = run_cell(bench, spec)
                    store.save(spec, record)
            except Exception as exc:  # recorded on the trial; the grid goes on
                error = f"{type(exc).__name__}: {exc}"
                log.debug("cell %s failed", spec.cell_id, exc_info=True)
                tb = traceback.format_exc(limit=5)
        seconds = time.perf_counter() - t0
        try:
            storage.set_trial_user_attr(trial_id, "seconds", round(seconds, 3))
            if error is not None:
                storage.set_trial_user_attr(trial_id, "error", error)
                storage.set_trial_user_attr(trial_id, "traceback", tb[-4000:])
                study.tell(ft.number, state=TrialState.FAIL)
                counts["error"] += 1
                say(f"[red]{spec.cell_id}: error {error}[/red] (trial {ft.number}; resubmit the grid to retry)")
                continue
            rec = jsonable(record)
            storage.set_trial_user_attr(trial_id, "record", rec)
            dice = float(rec.get("metrics", {}).get("dice", math.nan)) if rec["status"] == "ok" else math.nan
            if rec["status"] == "ok" and math.isfinite(dice):
                study.tell(ft.number, dice)
                counts["ok"] += 1
            else:
                study.tell(ft.number, state=TrialState.FAIL)
                counts["failed"] += 1
            say(f"{spec.cell_id}: {rec['status']} Dice {dice:.4f} in {seconds:.1f} s (trial {ft.number}, {me})")
        except UpdateFinishedTrialError:
            say(
                f"[yellow]{spec.cell_id}: trial {ft.number} was declared dead (no heartbeat for the grace period) "
                "while running; its retry owns the cell now[/yellow]"
            )
    counts["seconds"] = round(time.perf_counter() - t_start, 1)
    return counts


def status(study) -> dict[str, list[str]]:
    """Cell ids per state (see :func:`cell_state`)."""
    out: dict[str, list[str]] = defaultdict(list)
    for cid, trials in sorted(cells_by_id(study).items()):
        out[cell_state(trials)].append(cid)
    return dict(out)


def collect(storage, grid: str, out: Path, *, console=None) -> dict:
    """Write every recorded cell of ``grid`` into ``out/cells`` and render the leaderboard there."""
    from optuna.trial import TrialState

    from fewshot_transfer.data.splits import TargetSplit, save_split
    from fewshot_transfer.harness.outputs import render
    from fewshot_transfer.harness.rundir import check_run_dir
    from fewshot_transfer.harness.runner import reproduce_command
    from fewshot_transfer.harness.store import CellSpec, CellStore, atomic_write_text

    study, cfg, attrs = load_grid(storage, grid)
    out = Path(out)
    cfg = apply_overrides(cfg, [f"run.out={json.dumps(str(out))}"])
    check_run_dir(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", to_toml(cfg))
    split_path = out / "split.json"
    if split_path.is_file():
        if json.loads(split_path.read_text()) != attrs["split"]:
            raise ValueError(f"{split_path} is not grid {grid!r}'s split; collect into another --out")
    else:
        save_split(TargetSplit.from_json(attrs["split"]), split_path)
    store = CellStore(out)
    groups = cells_by_id(study)
    written, duplicates, missing = 0, [], {}
    workers, code = set(), set()
    for cid, trials in sorted(groups.items()):
        with_record = [t for t in trials if "record" in t.user_attrs]
        if not with_record:
            missing[cid] = cell_state(trials)
            continue
        complete = [t for t in with_record if t.state == TrialState.COMPLETE]
        chosen = (complete or with_record)[0]
        if len(complete) > 1:
            duplicates.append(f"{cid} (trials {', '.join(str(t.number) for t in complete)})")
        record = dict(chosen.user_attrs["record"])
        spec = CellSpec(
            seed=int(record["seed"]), k=int(record["k"]), k_label=str(record["k_label"]), learner=str(record["learner"])
        )
        record.pop("run_dir", None)
        record["command"] = reproduce_command(out, spec.learner, spec.k_label, [spec.seed])
        record["grid"] = {"name": grid, "trial": chosen.number, "worker": chosen.user_attrs.get("worker", "")}
        workers.add(chosen.user_attrs.get("worker", "?").split(":")[0])
        code.add(str(record.get("provenance", {}).get("code", {}).get("source_sha", "")))
        store.save(spec, record)
        written += 1
    if duplicates:
        log.warning("cells computed more than once (the first is used): %s", "; ".join(duplicates))
    if len(code) > 1:
        log.warning(
            "workers ran different code versions (source_sha %s); compare provenance.code in cells/*.json",
            ", ".join(sorted(code)),
        )
    if missing:
        by_state = defaultdict(int)
        for s in missing.values():
            by_state[s] += 1
        log.warning(
            "%d of %d cells have no result yet (%s); the leaderboard covers the finished ones",
            len(missing),
            len(groups),
            ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())),
        )
    rows = []
    if written:
        meta = {
            "grid": f"{grid} in {redact(storage.url)} ({written} of {len(groups)} cells)",
            "workers": ", ".join(sorted(workers)),
            "config": str(out / "config.toml"),
        }
        rows = render([out], out, meta=meta, console=console)
    return {"written": written, "total": len(groups), "missing": missing, "duplicates": duplicates, "rows": rows}
