"""``ftbench claims``: judge pre-registered paired comparisons on one or more data draws."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from fewshot_transfer.harness import claims

    p = sub.add_parser(
        "claims",
        help="judge claims (paired comparisons, Holm) on independent data draws",
        description=claims.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("claims", type=Path, metavar="CLAIMS.toml", help="[[claim]] tables: name, comparisons")
    p.add_argument(
        "--draw",
        action="append",
        required=True,
        metavar="NAME=RUN_DIR[,RUN_DIR...]",
        help="one data draw (repeat): a run directory, a comma list of them or a folder of them (one per fold)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="markdown table (a .json with the numbers is written beside it)"
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from fewshot_transfer.harness.claims import judge_file

    words = [str(args.claims), *[w for d in args.draw for w in ("--draw", d)], "--out", str(args.out)]
    print(judge_file(args.claims, args.draw, args.out, "ftbench claims " + shlex.join(words)))
    return 0
