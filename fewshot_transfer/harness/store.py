"""Finished cells on disk: one JSON file per (learner, k, seed), written atomically.

A cell file appears only once it is complete (written to a temp file, then renamed), so an
interrupted or killed run never leaves half a result, and a rerun skips exactly the cells
that exist. Several processes may share one directory: two writers of the same cell
produce identical content and the rename is atomic.

Records are upgraded where they are read (:meth:`CellStore.records`): a field that older
cells lack is filled in from what the cells themselves record, never from the live learner
registry, so reading results imports neither torch nor the learners.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot_transfer.atomic import atomic_open, atomic_write_text
from fewshot_transfer.plan import TunedFrom

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class CellSpec:
    """One grid cell. ``k_label`` is what the user asked for ("5", "25%", "all", "any")."""

    seed: int
    k: int
    k_label: str
    learner: str
    #: Training replicate at this episode (``--replicates``): the same shots and pools,
    #: another initialisation, batch order and augmentation (``training_seed``).
    replicate: int = 0

    @property
    def cell_id(self) -> str:
        safe = self.k_label.replace("%", "pct")
        rep = f"__rep-{self.replicate}" if self.replicate else ""
        return f"{self.learner}__k-{safe}__seed-{self.seed}{rep}"


#: Seed stride between training replicates of one episode (far from any episode seed in use).
REPLICATE_STRIDE = 10_000_019


def training_seed(seed: int, replicate: int) -> int:
    """The seed of a cell's training randomness (initialisation, source pretraining, batch
    order, augmentation); the episode seed alone fixes the shots and pools. Replicate 0 is
    the episode seed itself, so runs without replicates keep their numbers."""
    return seed + REPLICATE_STRIDE * replicate


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Atomically write dict rows as CSV (columns default to the union of keys, in order)."""
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


class CellStore:
    """The ``cells/`` folder of a run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.root = Path(run_dir) / "cells"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, spec: CellSpec) -> Path:
        return self.root / f"{spec.cell_id}.json"

    def has(self, spec: CellSpec) -> bool:
        return self.path(spec).is_file()

    def load(self, spec: CellSpec) -> dict | None:
        p = self.path(spec)
        return read_cell(p) if p.is_file() else None

    def save(self, spec: CellSpec, record: dict) -> Path:
        p = self.path(spec)
        atomic_write_text(p, json.dumps(record, indent=1, sort_keys=True, default=float))
        return p

    def records(self) -> list[dict]:
        """Every cell of the run, upgraded to the current record (:func:`upgrade_records`)."""
        return upgrade_records([r for r in (read_cell(p) for p in sorted(self.root.glob("*.json"))) if r is not None])


def read_cell(path: Path) -> dict | None:
    """A cell record, or None (with a warning) when the file is not a valid cell."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable cell file %s (%s); delete it to recompute that cell", path, exc)
        return None
    if not isinstance(record, dict) or "learner" not in record or "status" not in record:
        log.warning("ignoring %s: not a cell record", path)
        return None
    record.setdefault("run_dir", str(Path(path).parent.parent))
    return record


#: The control arms the learners declared (``Control(off, same_as)``, ``learners/base.py``) in
#: commit 54732c5, from which on every cell records its ``control``. A cell written before has
#: no such field; it is rebuilt from this frozen table and the parameters the run's cells
#: record (:func:`upgrade_records`). A learner added since always records its control, so the
#: table never grows; a plugin learner's old cells stay without one (as before).
LEGACY_CONTROLS: dict[str, tuple[dict[str, float], str | None]] = {
    "finetune": ({}, "scratch"),
    "joint": ({"source_share": 0.0}, None),
    **dict.fromkeys(("single-adv", "dual-adv", "adaptseg", "adaptseg-balanced"), ({"lambda_adv": 0.0}, None)),
    **dict.fromkeys(("maml", "fomaml", "metasgd", "reptile"), ({"meta_steps": 0}, "finetune")),
    **dict.fromkeys(("anil", "maml-fewstep"), ({"meta_steps": 0}, None)),
    **dict.fromkeys(("pseudo-label", "mean-teacher"), ({"unlabeled_weight": 0.0}, "scratch")),
    **dict.fromkeys(("pseudo-label-cap", "mean-teacher-cap"), ({"unlabeled_weight": 0.0}, "finetune")),
}


def legacy_control(record: dict, params_at: dict[tuple[str, str], dict]) -> str:
    """The control row of a cell written before cells recorded it (``learners/controls.py``'s
    rule, read off the records): ``same_as`` when the run has its cell at this k and its
    recorded parameters agree with the learner's own with the mechanism off, otherwise the
    derived ``NAME-control`` row; "" for a learner without a control (and at k = 0 for one
    that needs target labels).

    ``params_at`` maps (learner, k label) to the parameters the run's cells record. When the
    run has no ``same_as`` cell at this k (so no row to compare, and no mechanism gain either),
    the row named is ``same_as`` at k > 0, what the rule gives at the default parameters of
    the code that wrote these cells, and ``NAME-control`` at k = 0 (``same_as`` never has k = 0
    cells: scratch and finetune need target labels)."""
    name, k = str(record["learner"]), int(record.get("k", 0))
    if name not in LEGACY_CONTROLS or (k == 0 and not record.get("supports_k0")):
        return ""
    off, same_as = LEGACY_CONTROLS[name]
    if same_as:
        theirs = params_at.get((same_as, _k_label(record)))
        if theirs is None:
            return same_as if k > 0 else f"{name}-control"
        mine = {**(record.get("params") or {}), **off}
        if all(mine.get(key, value) == value for key, value in theirs.items()):
            return same_as
    return f"{name}-control"


def _k_label(record: dict) -> str:
    return str(record.get("k_label", record.get("k", "")))


def upgrade_records(records: list[dict]) -> list[dict]:
    """The cells of one run as the current code reads them. Cells written before control arms
    were recorded get their ``control`` (:func:`legacy_control`); cells written before
    ``tuned_from`` was structured get it as a list of studies (:class:`~fewshot_transfer.plan.TunedFrom`)."""
    records = [_structured_tuned_from(r) for r in records]
    if all("control" in r for r in records):
        return records
    params_at = {(str(r["learner"]), _k_label(r)): r.get("params") or {} for r in records if r.get("params")}
    return [r if "control" in r else {**r, "control": legacy_control(r, params_at)} for r in records]


def _structured_tuned_from(record: dict) -> dict:
    """A record whose ``tuned_from`` is the old ``"; "``-joined string, with the studies it names."""
    value = record.get("tuned_from")
    if not isinstance(value, str):
        return record
    return {**record, "tuned_from": TunedFrom.read(value).to_json() or None}


def load_records(run_dirs: Iterable[Path]) -> list[dict]:
    """All cell records of several run directories (merging runs for one leaderboard)."""
    out: list[dict] = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "cells").is_dir():
            raise FileNotFoundError(f"{d} has no cells/ folder; is it an `ftbench run --out` directory?")
        out.extend(CellStore(d).records())
    return out


def pool_folds(run_dirs: list[Path], records: list[dict]) -> tuple[list[dict], str]:
    """The cells of the runs of a cross-validation (one run directory per fold) as one run whose
    unit of replication is (fold, seed): every (fold, seed) gets its own unit number in
    ``seed`` (the original kept in ``fold`` / ``fold_seed``), so fold f's seed s is paired
    with fold f's seed s only and never averaged with another fold's seed s.

    Returns the records and a one-line description of the units for the leaderboard header.
    The runs must share their source and target and differ in their split (clear error otherwise).
    """
    order = {str(Path(d)): i for i, d in enumerate(run_dirs)}
    data = {i: set() for i in order.values()}
    for r in records:
        d = r.get("provenance", {}).get("data", {})
        data[order[r["run_dir"]]].add((d.get("source"), d.get("target"), d.get("split")))
    seen = {x for v in data.values() for x in v}
    if len({(s, t) for s, t, _ in seen}) > 1:
        raise ValueError(
            "--folds: the runs have different sources or targets; folds of one cross-validation share both"
        )
    splits = [next(iter(v))[2] for v in data.values() if len(v) == 1]
    if len(splits) != len(run_dirs) or len(set(splits)) != len(splits):
        raise ValueError(
            "--folds: each run must hold one fold (one data split) and the folds must differ; "
            "give one `ftbench run` directory per fold (scripts/run_folds.sh writes them)"
        )
    units = sorted({(order[r["run_dir"]], int(r["seed"])) for r in records})
    number = {u: i for i, u in enumerate(units)}
    pooled = [
        {
            **r,
            "fold": order[r["run_dir"]],
            "fold_seed": int(r["seed"]),
            "seed": number[(order[r["run_dir"]], int(r["seed"]))],
        }
        for r in records
    ]
    seeds = sorted({s for _, s in units})
    text = (
        f"fold × seed: {len(units)} units ({len(run_dirs)} folds × seeds {', '.join(map(str, seeds))}); "
        f"unit u = fold {units[0][0]} seed {units[0][1]} … fold {units[-1][0]} seed {units[-1][1]} in order"
    )
    return pooled, text
