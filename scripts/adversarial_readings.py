"""What the adversarial learners did, read from their cells: the measured why behind a verdict.

    python scripts/adversarial_readings.py results/real-claims [--out results/real-claims/adversarial.md]

For every learner × k of a run directory (or a folder of fold runs), averaged over the
units (fold × seed) that finished:

* **domain probe** before → after adaptation (``probe``: a logistic probe's balanced
  accuracy at telling source from target features at the adapted layer, on held-out rows;
  0.5 = the domains cannot be told apart): did the adversary align the domains at all?
* **discriminator accuracy** on source / target rows at the last logged step, per
  discriminator (``summary.adversarial.d_last``: AdaptSeg's ``main`` / ``aux`` output-space
  ones, dual-adv's lesion ``pos`` / background ``neg`` ones): near 0.5 on both is fooled
  (or starved), near 1 on target rows won the game;
* **predicted / true lesion fraction** on the test slices (``metrics``): alignment that
  shrinks or inflates the predicted lesion shows here first;
* Dice, for reference.

Learners without those records (non-adversarial rows) show only the fractions and Dice.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.harness.store import load_records


def run_dirs(path: Path) -> list[Path]:
    """``path`` itself when it is a run directory, else its sub-folders that are (one per fold)."""
    if (path / "cells").is_dir():
        return [path]
    found = sorted(d for d in path.iterdir() if (d / "cells").is_dir())
    if not found:
        raise SystemExit(f"{path}: neither a run directory (cells/) nor a folder of run directories")
    return found


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def readings(records: list[dict]) -> list[dict]:
    """One row per (learner, k) of the finished cells: the means described in the module docstring."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            groups[(r["learner"], str(r["k_label"]))].append(r)
    rows = []
    for (learner, k), cells in sorted(groups.items(), key=lambda kv: (kv[0][1] != "any", kv[0][1], kv[0][0])):
        probe = [c.get("probe") or {} for c in cells]
        d_last = [((c.get("summary") or {}).get("adversarial") or {}).get("d_last") or {} for c in cells]
        discs = sorted({key[5:].rsplit("_", 1)[0] for d in d_last for key in d if key.startswith("dacc_")})
        dacc = {
            name: (
                _mean([d.get(f"dacc_{name}_src") for d in d_last]),
                _mean([d.get(f"dacc_{name}_tgt") for d in d_last]),
            )
            for name in discs
        }
        rows.append(
            {
                "learner": learner,
                "k": k,
                "n": len(cells),
                "dice": _mean([c["metrics"]["dice"] for c in cells]),
                "pred_fraction": _mean([c["metrics"].get("pred_fraction") for c in cells]),
                "true_fraction": _mean([c["metrics"].get("true_fraction") for c in cells]),
                "probe_layer": next((p.get("layer") for p in probe if p.get("layer")), ""),
                "probe_before": _mean([(p.get("before") or {}).get("balanced") for p in probe]),
                "probe_after": _mean([(p.get("after") or {}).get("balanced") for p in probe]),
                "dacc": dacc,
            }
        )
    return rows


def markdown(rows: list[dict], command: str) -> str:
    def f(v: float) -> str:
        return "" if not np.isfinite(v) else f"{v:.3f}"

    lines = [
        "# What the adversarial learners did (means over the finished units)",
        "",
        f"Command: `{command}`",
        "",
        "probe = balanced accuracy of a source-vs-target probe at the adapted layer (0.5: the domains cannot be told "
        "apart), before → after adaptation; D acc = the discriminator's accuracy on source / target rows at the last "
        "logged step; pred / true = predicted and true lesion fraction of the test slices.",
        "",
        "| learner | k | n | Dice | pred / true lesion | probe before → after (layer) | D acc src / tgt, per discriminator |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        probe = (
            f"{f(r['probe_before'])} → {f(r['probe_after'])} ({r['probe_layer']})"
            if np.isfinite(r["probe_after"])
            else ""
        )
        dacc = "; ".join(f"{name} {f(a)} / {f(b)}" for name, (a, b) in r["dacc"].items())
        ratio = r["pred_fraction"] / r["true_fraction"] if r["true_fraction"] else float("nan")
        lines.append(
            f"| {r['learner']} | {r['k']} | {r['n']} | {f(r['dice'])} | "
            f"{f(r['pred_fraction'])} / {f(r['true_fraction'])} (×{ratio:.2f}) | {probe} | {dacc} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run directory or a folder of fold runs")
    ap.add_argument("--out", type=Path, help="write the markdown table here (default: print only)")
    args = ap.parse_args(argv)
    rows = readings(load_records(run_dirs(args.run)))
    command = "python scripts/adversarial_readings.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = markdown(rows, command)
    if args.out:
        atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
