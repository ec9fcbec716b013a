"""Do two run directories agree cell for cell?

    python scripts/compare_runs.py runs/quick results/quick

Compares every cell present in both directories (same learner, k, seed): metrics and
per-slice Dice must be equal to the last bit. Cells present in only one directory are
counted, not compared (the default command runs 3 seeds, results/quick holds 10). When
cells differ and the two runs recorded different machines (CPU, torch kernel path), it says
so: CPU floats agree to the last bit only on the same kernel path. Exit status 0 when every
shared cell agrees and at least one cell is shared, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewshot_transfer.provenance import machines_of


def load_cells(run: Path) -> dict[str, dict]:
    cells = run / "cells"
    if not cells.is_dir():
        raise SystemExit(f"{run}: no cells/ folder (is this an ftbench run directory?)")
    out = {}
    for path in sorted(cells.glob("*.json")):
        rec = json.loads(path.read_text())
        if rec.get("status", "ok") == "ok":
            out[path.stem] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    args = ap.parse_args(argv)
    a, b = load_cells(args.a), load_cells(args.b)
    shared = sorted(set(a) & set(b))
    differ = []
    for cid in shared:
        ra, rb = a[cid], b[cid]
        if ra["metrics"] != rb["metrics"] or ra.get("per_slice") != rb.get("per_slice"):
            da, db = ra["metrics"].get("dice"), rb["metrics"].get("dice")
            differ.append(f"  {cid}: dice {da} vs {db}")
    print(
        f"{len(shared)} cells in both, {len(set(a) - set(b))} only in {args.a}, {len(set(b) - set(a))} only in {args.b}"
    )
    if differ:
        print(f"{len(differ)} shared cells differ:")
        print("\n".join(differ))
        ma, mb = machines_of(list(a.values())), machines_of(list(b.values()))
        if ma != mb:
            print(f"machines differ: {args.a}: {ma or 'not recorded'}; {args.b}: {mb or 'not recorded'}")
            print("CPU results agree to the last bit only on the same kernel path: compare the CIs instead")
        return 1
    if not shared:
        print("no shared cells: nothing was compared")
        return 1
    print("every shared cell is identical (metrics and per-slice Dice)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
