"""Screen a grid of scenarios for output-space collapse (issue #22, the imbalance positive control).

    python -m fewshot_transfer.experiments.screen_collapse imbalance \\
        --axis 'data.source=phantom:covid?seed=1000&lesion_size=0.5|phantom:covid?seed=1000' \\
        --axis 'learners.adaptseg.lambda_adv=0.01|0.1|1' --axis 'learners.adaptseg.d_depth=2|4' \\
        --seeds 2 --out results/controls/imbalance-grid

Collapse is a large effect (predicted lesion area below a fifth of the true one), so a
screen of a few seeds per grid point finds where it happens; a point that collapses is then
judged properly by ``python -m fewshot_transfer.experiments.controls imbalance --set ...`` (10 seeds, Holm over every
point screened, replication on a new draw). For every grid point and seed the screen runs
k = 0 cells of the scenario's ``must_collapse`` learner (adaptseg); its λ = 0 control and
source-only depend only on the data axes, so they run once per data point and seed. A point
*collapses* when the learner's pred/true lesion fraction is below ``COLLAPSE_RATIO`` while
its control's is not and the source model itself detects the target lesions (source-only
pred/true >= 0.5): only then is the collapse the adversary's doing.

Writes ``grid.csv`` (one row per cell), ``points.csv`` (one row per grid point, means over
seeds) and ``README.md``; resumable (``OUT/progress.jsonl``, the same as ``experiments/controls.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewshot_transfer import learners
from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.config import load_toml, resolve_config, to_toml
from fewshot_transfer.experiments import ROOT
from fewshot_transfer.experiments.controls import Progress, cell, with_draw
from fewshot_transfer.harness.leaderboard import COLLAPSE_RATIO
from fewshot_transfer.harness.rundir import open_run
from fewshot_transfer.harness.store import write_csv
from fewshot_transfer.metrics import evaluate
from fewshot_transfer.provenance import code_version


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``KEY=V1|V2`` -> (KEY, [V1, V2]); values may contain ``=`` and ``&`` (phantom specs)."""
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise SystemExit(f"--axis {text!r}: expected KEY=V1|V2|...")
    return key.strip(), [v.strip() for v in values.split("|")]


def quoted(key: str, value: str) -> str:
    """A ``--set`` override; strings that are not numbers go in TOML quotes."""
    try:
        float(value)
    except ValueError:
        return f"{key}='{value}'"
    return f"{key}={value}"


def grid_points(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))]


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m fewshot_transfer.experiments.screen_collapse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("scenario", help="a preset in configs/scenarios/ with must_collapse (imbalance)")
    ap.add_argument("--axis", action="append", default=[], metavar="KEY=V1|V2", help="one grid axis (repeat)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per grid point (default 2)")
    ap.add_argument("--draw", type=int, default=0, help="data draw (as experiments.controls)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every point")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    axes = [parse_axis(a) for a in args.axis]
    if not axes:
        raise SystemExit("give at least one --axis")
    preset = ROOT / "configs" / "scenarios" / f"{args.scenario}.toml"
    user = load_toml(preset)
    spec = user.pop("control")
    learner = spec["must_collapse"][0].split("@")[0].strip()
    control = f"{learner}-control"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "preset.toml").write_text(to_toml(user))
    fixed = list(args.set)
    args.set = [*fixed, *(f"--axis {a}" for a in args.axis), f"seeds {args.seeds}"]  # the run's identity
    base = resolve_config(out / "preset.toml", fixed)
    progress = Progress(out, args, {**base, "control": spec})
    done = {(r["point"], r["seed"], r["learner"]) for r in progress.rows}
    rows = list(progress.rows)
    learner_key = f"learners.{learner}."
    for point in grid_points(axes):
        data_point = {k: v for k, v in point.items() if not k.startswith(learner_key)}
        overrides = [*fixed, *(quoted(k, v) for k, v in point.items())]
        cfg = with_draw(resolve_config(out / "preset.toml", overrides), args.draw)
        key = hashlib.sha1(_label(data_point).encode()).hexdigest()[:10]
        bench = open_run(
            cfg,
            Path("runs") / "screens" / f"{args.scenario}-draw{args.draw}" / key,
            threads=args.threads,
            check=False,
            write_config=False,
        )
        for seed in range(args.seeds):
            # the control and source-only depend on the data axes only: once per data point and seed
            for name, where in ((learner, point), (control, data_point), ("source-only", data_point)):
                label = _label(where)
                if (label, seed, name) in done:
                    continue
                t = time.perf_counter()
                if name == "source-only":
                    ctx = bench.context(learners.get(learner), 0, seed)
                    seg = ctx.segmenter(ctx.source_model().eval())
                    m = evaluate(seg.predict(bench.test_set.images), bench.test_set.masks)[0]
                else:
                    m = cell(bench, name, 0, seed)["metrics"]
                row = {
                    "point": label,
                    "seed": seed,
                    "learner": name,
                    "dice": round(float(m["dice"]), 4),
                    "pred_true": round(float(m["pred_fraction"] / m["true_fraction"]), 4),
                    "true_fraction": round(float(m["true_fraction"]), 5),
                    "s": round(time.perf_counter() - t, 1),
                }
                rows.append(row)
                done.add((label, seed, name))
                progress.add(row)
                print(
                    f"  {label} seed {seed} {name:<18} dice {row['dice']:.3f} pred/true {row['pred_true']:.2f}",
                    flush=True,
                )
    points = summarize(grid_points(axes), rows, learner, control, learner_key)
    write(out, args, rows, points, learner, control)


def _label(point: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in point.items()) or "(preset)"


def summarize(points: list[dict], rows: list[dict], learner: str, control: str, learner_key: str) -> list[dict]:
    """One row per grid point: means over seeds of the learner, its control and source-only."""

    def mean(label: str, name: str, key: str) -> float:
        vals = [r[key] for r in rows if r["point"] == label and r["learner"] == name]
        return float(np.mean(vals)) if vals else float("nan")

    table = []
    for point in points:
        label = _label(point)
        data = _label({k: v for k, v in point.items() if not k.startswith(learner_key)})
        row = {
            **point,
            f"{learner} dice": mean(label, learner, "dice"),
            f"{learner} pred/true": mean(label, learner, "pred_true"),
            "control dice": mean(data, control, "dice"),
            "control pred/true": mean(data, control, "pred_true"),
            "source-only pred/true": mean(data, "source-only", "pred_true"),
        }
        row["collapses"] = bool(
            row[f"{learner} pred/true"] < COLLAPSE_RATIO
            and row["control pred/true"] >= COLLAPSE_RATIO
            and row["source-only pred/true"] >= 0.5
        )
        table.append(row)
    return table


def write(out: Path, args, rows: list[dict], points: list[dict], learner: str, control: str) -> None:
    write_csv(out / "grid.csv", rows)
    write_csv(out / "points.csv", points)
    command = "python -m fewshot_transfer.experiments.screen_collapse " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    code = code_version()
    head = list(points[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    found = [p for p in points if p["collapses"]]
    lines = [
        f"# Collapse screen: {args.scenario}",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"Code: git `{code.get('git')}`, source hash `{code.get('source_sha')}`; {args.seeds} seeds per point, k = 0, "
        f"data draw {args.draw}. A point collapses when {learner}'s pred/true < {COLLAPSE_RATIO} while {control}'s is "
        "not and source-only's is >= 0.5.",
        "",
        f"**{len(found)} of {len(points)} grid points collapse.**",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *["| " + " | ".join(fmt(p[h]) for h in head) + " |" for p in points],
        "",
        "Per-cell numbers in `grid.csv`.",
    ]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
