"""``ftbench leaderboard``: re-render one run or merge several into one leaderboard."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="re-render and merge run directories into one leaderboard",
        description="Merge the finished cells of one or more `ftbench run --out` directories (later "
        "directories win on duplicate cells) and write leaderboard.{md,csv,json} and transfer_gain.png.",
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
    render(dirs, out, meta=meta, console=make_console(), metrics=args.metrics)
    return 0
