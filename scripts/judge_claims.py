"""``ftbench claims`` under its earlier name (the command the committed claims tables record).

    python scripts/judge_claims.py --claims configs/claims.toml \\
        --draw 0=results/claims --draw 1=results/claims-replication --out results/claims/claims.md

The judging itself lives in :mod:`fewshot_transfer.harness.claims` (verdict rule, Holm
family, fold x seed units, pre-registration commit); see ``ftbench claims --help``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from fewshot_transfer.harness.claims import judge_file


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", default="configs/claims.toml", help="TOML with [[claim]] name / comparisons")
    ap.add_argument(
        "--draw",
        action="append",
        required=True,
        metavar="NAME=RUN_DIR[,RUN_DIR...]",
        help="one data draw (repeat): a run directory, a comma list of them or a folder of them (one per fold)",
    )
    ap.add_argument("--out", required=True, help="markdown table (a .json with the numbers is written beside it)")
    args = ap.parse_args(argv)
    command = "python scripts/judge_claims.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        print(judge_file(Path(args.claims), args.draw, Path(args.out), command))
    except ValueError as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
