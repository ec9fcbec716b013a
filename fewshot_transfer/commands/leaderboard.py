"""``ftbench leaderboard``: re-render one run or merge several into one leaderboard."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fewshot_transfer.harness.latex import INTERVALS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="re-render and merge run directories into one leaderboard",
        description="Merge the finished cells of one or more `ftbench run --out` directories (later "
        "directories win on duplicate cells) and write leaderboard.{md,csv,json} and transfer_gain.png. Runs made "
        "under different selection rules (ftbench run --protocol tuned --selection RULE) stand side by side as "
        "'LEARNER [RULE]', each gain against the same rule's reference.",
    )
    p.add_argument("dirs", nargs="+", help="run directories")
    p.add_argument("--out", help="where to write (default: the first directory)")
    p.add_argument(
        "--metrics",
        action="append",
        metavar="SET",
        help="also show this metric set beside Dice at 0.5 (repeatable; 'infnet': the COVID-SemiSeg table's "
        "meanDic / maxDic / adpDic / meanSen / meanSpe / MAE; default: the runs' [eval] metrics)",
    )
    p.add_argument(
        "--folds",
        action="store_true",
        help="the directories are the folds of one cross-validation (scripts/run_folds.sh): pool them with "
        "(fold, seed) as the unit of replication, so each fold's seed is paired with itself only",
    )
    p.add_argument(
        "--latex",
        action="store_true",
        help="also write leaderboard.tex: one booktabs table per k (rank, learner, selection rule, Dice, gain, n)",
    )
    p.add_argument(
        "--interval",
        choices=INTERVALS,
        default="ci",
        help="--latex: mean ± the 95%% CI half-width (ci, default) or ± the standard error (se)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from fewshot_transfer.commands import console as make_console
    from fewshot_transfer.harness.outputs import render

    dirs = [Path(d) for d in args.dirs]
    out = Path(args.out) if args.out else dirs[0]
    meta = {"merged runs": ", ".join(map(str, dirs))}
    previous = dirs[0] / "leaderboard.json"
    if len(dirs) == 1 and previous.is_file():
        meta = json.loads(previous.read_text()).get("meta") or meta  # keep the run's own description
    if "code (this render)" in meta:
        from fewshot_transfer.provenance import code_version

        meta["code (this render)"] = code_version()  # the cells keep their own code versions
    console = make_console()
    if args.folds and not args.out:
        raise ValueError("--folds: give --out, the folder for the pooled leaderboard (e.g. the folds' parent)")
    rows = render(dirs, out, meta=meta, console=console, metrics=args.metrics, folds=args.folds)
    if args.latex:
        from fewshot_transfer.harness.latex import to_latex
        from fewshot_transfer.harness.store import atomic_write_text

        path = out / "leaderboard.tex"
        atomic_write_text(path, to_latex(rows, interval=args.interval))
        console.print(f"wrote {path} (mean ± {'95% CI half-width' if args.interval == 'ci' else 'standard error'})")
    return 0
