"""``ftbench report``: one self-contained HTML page of one run or several merged."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = """\
Write DIR/report.html from the recorded cells of one or more run directories (merged like
`ftbench leaderboard`): the leaderboard per k (sortable) with its header facts and reproduce
commands, transfer gain and Dice against the labeled fraction, per-seed pairs and per-slice
Dice, a forest plot of mechanism gains with Holm p, a prediction gallery, the failed,
collapsed and pruned cells with why, and training curves. Nothing is trained and torch is
not imported; the page embeds its figures and opens offline.

  ftbench report results/quick --out report/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report of one or more run directories",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dirs", nargs="+", help="run directories (the --out of `ftbench run` or `ftbench grid collect`)")
    p.add_argument("--out", required=True, help="folder to write report.html into")
    p.add_argument(
        "--gallery-k", help="k of the prediction gallery (a k label of the runs; default: the smallest k > 0)"
    )
    p.add_argument(
        "--gallery-seed", type=int, help="seed of the prediction gallery (default: the smallest seed at that k)"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from fewshot_transfer.harness.html_report import write_report

    path = write_report(
        [Path(d) for d in args.dirs], Path(args.out), gallery_k=args.gallery_k, gallery_seed=args.gallery_seed
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained: open it in any browser)")
    return 0
