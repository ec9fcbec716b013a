"""Do two run directories agree cell for cell?

    python scripts/compare_runs.py runs/quick results/quick

Compares every cell present in both directories (same learner, k, seed): metrics and
per-slice Dice must be equal to the last bit. Cells present in only one directory are
counted, not compared (the default command runs 3 seeds, results/quick holds 10).

When bits are promised (it prints each run's float mode):

* both runs **portable** (``ftbench run --portable``, the same float mode): on any x86-64 CPU,
  given the same code, config, thread count, torch build, numpy and glibc. A differing cell is
  a real difference, never the CPU; the script says which of those recorded versions differ.
* both runs **native** (the default): only on the same CPU kernel path, in practice the same
  CPU model and torch build. Two AVX-512 CPUs of different vendors already give other floats
  (issue #35), so on another machine compare the confidence intervals, not the bits.
* one portable and one native: never; compare the intervals.

Exit status 0 when every shared cell agrees and at least one cell is shared, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewshot_transfer.portable import NATIVE, modes_of
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


def software_of(records: list[dict]) -> list[str]:
    """The distinct software stacks (torch, numpy, C library) and thread counts the cells record."""
    return sorted(
        {
            f"torch {m.get('torch', '?')}, numpy {m.get('numpy', '?')}, {m.get('libc', '?')}, "
            f"{r['provenance'].get('threads', '?')} thread(s)"
            for r in records
            if (m := r.get("provenance", {}).get("machine"))
        }
    )


def explain(a: Path, b: Path, ra: list[dict], rb: list[dict]) -> list[str]:
    """Why shared cells may differ, from the two runs' float modes and recorded machines."""
    ma, mb = modes_of(ra) or [NATIVE], modes_of(rb) or [NATIVE]
    if ma == mb and len(ma) == 1 and ma[0] != NATIVE:
        lines = [
            f"both runs are portable ({ma[0]}): bits are promised on any x86-64 CPU, so these cells differ for a "
            "real reason (code, config, data, thread count or software), not the CPU"
        ]
        sa, sb = software_of(ra), software_of(rb)
        if sa != sb:
            lines.append(f"recorded software differs: {a}: {'; '.join(sa)}; {b}: {'; '.join(sb)}")
        return lines
    if ma != mb:
        return [
            f"float modes differ ({a}: {', '.join(ma)}; {b}: {', '.join(mb)}): portable and native cells are "
            "other floats by design; compare the CIs, or rerun both in one mode"
        ]
    xa, xb = machines_of(ra), machines_of(rb)
    if xa != xb:
        return [
            f"machines differ: {a}: {xa or 'not recorded'}; {b}: {xb or 'not recorded'}",
            "native CPU results agree to the last bit only on the same kernel path: compare the CIs instead "
            "(or run both with --portable)",
        ]
    return []


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
    print(
        f"float mode: {args.a}: {', '.join(modes_of(list(a.values()))) or NATIVE}; "
        f"{args.b}: {', '.join(modes_of(list(b.values()))) or NATIVE}"
    )
    if differ:
        print(f"{len(differ)} shared cells differ:")
        print("\n".join(differ))
        print("\n".join(explain(args.a, args.b, list(a.values()), list(b.values()))))
        return 1
    if not shared:
        print("no shared cells: nothing was compared")
        return 1
    print("every shared cell is identical (metrics and per-slice Dice)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
