"""What went wrong in a run, each with why: failed cells, collapsed cells, pruned tuning trials.

A report lists them so a reader sees what the leaderboard's means leave out or hide.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewshot_transfer.harness.leaderboard import COLLAPSE_RATIO

log = logging.getLogger(__name__)

#: A cell whose Dice is below this is listed as collapsed whatever its lesion fractions.
COLLAPSE_DICE = 0.01


@dataclass(frozen=True)
class Problem:
    """One listed cell or trial: what it is, which kind of problem, and why."""

    kind: str
    what: str
    why: str
    command: str = ""


def failed_cells(records: list[dict]) -> list[Problem]:
    """Cells recorded with a status other than ok (e.g. training diverged)."""
    return [
        Problem("failed", r.get("cell_id", r["learner"]), str(r.get("reason") or r["status"]), r.get("command", ""))
        for r in records
        if r["status"] != "ok"
    ]


def collapsed_cells(records: list[dict]) -> list[Problem]:
    """Cells that predict (almost) no lesion: Dice ≈ 0, or a predicted lesion fraction below
    ``COLLAPSE_RATIO`` of the true one (the leaderboard's collapse flag, per cell)."""
    out = []
    for r in records:
        if r["status"] != "ok":
            continue
        m = r.get("metrics", {})
        dice, pred, true = (float(m.get(key, math.nan)) for key in ("dice", "pred_fraction", "true_fraction"))
        reasons = []
        if math.isfinite(pred) and math.isfinite(true) and pred < COLLAPSE_RATIO * true:
            reasons.append(f"predicted lesion fraction {pred:.5f} < {COLLAPSE_RATIO:.0%} of the true {true:.5f}")
        if math.isfinite(dice) and dice < COLLAPSE_DICE:
            reasons.append(f"Dice {dice:.4f} < {COLLAPSE_DICE}")
        if reasons:
            out.append(Problem("collapsed", r.get("cell_id", r["learner"]), "; ".join(reasons), r.get("command", "")))
    return out


def pruned_trials(run_dirs: list[Path]) -> list[Problem]:
    """Pruned (and failed) trials of the tuning studies in ``RUN/tuning/study.db`` (``--protocol tuned``),
    each with the value it reported last and the median of the complete trials there."""
    out: list[Problem] = []
    for run_dir in run_dirs:
        db = Path(run_dir) / "tuning" / "study.db"
        if db.is_file():
            try:
                out.extend(_study_problems(db))
            except Exception as exc:  # an unreadable study must not cost the rest of the report
                log.warning("cannot read the tuning studies in %s: %s", db, exc)
                out.append(Problem("unreadable", str(db), f"tuning studies not read: {exc}"))
    return out


def _study_problems(db: Path) -> list[Problem]:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{db}"
    out = []
    for name in optuna.get_all_study_names(storage=url):
        trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        for t in trials:
            if t.state == TrialState.PRUNED:
                step = max(t.intermediate_values) if t.intermediate_values else None
                if step is None:
                    why = "pruned before reporting a value"
                else:
                    others = [c.intermediate_values[step] for c in complete if step in c.intermediate_values]
                    median = f"; median of the complete trials there {np.median(others):.4f}" if others else ""
                    why = f"pruned after episode {step}: reported {t.intermediate_values[step]:.4f}{median}"
                out.append(Problem("pruned", f"{name} trial #{t.number} {_params(t.params)}", why))
            elif t.state == TrialState.FAIL:
                reason = t.user_attrs.get("error") or t.user_attrs.get("reason") or "failed (no reason recorded)"
                out.append(Problem("failed trial", f"{name} trial #{t.number} {_params(t.params)}", str(reason)))
    return out


def _params(params: dict) -> str:
    return "(" + ", ".join(f"{k} {format(v, '.4g') if isinstance(v, float) else v}" for k, v in params.items()) + ")"
