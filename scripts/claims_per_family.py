"""Each claim judged with its own Holm family, beside the table-wide family of judge_claims.py.

    python scripts/claims_per_family.py --draw 0=results/claims --draw 1=results/claims-replication \\
        --out results/claims/claims-per-family.md

``scripts/judge_claims.py`` Holm-corrects each draw over every comparison of the claims file
(37 in ``configs/claims.toml``). This script recomputes the same paired differences (its
``dice_by_seed`` and ``compare``: t-test over seeds, replicates averaged per seed,
``source-only`` serving every k) and Holm-corrects them a second way: within each
``[[claim]]`` table only (2 to 4 comparisons). It prints, per comparison and draw, the mean
[95% t-CI], the raw p, the claim-family Holm p and the table-family Holm p, and the verdict
under each family (the rule of judge_claims.py: supported / reversed only when Holm p < 0.05
the same way on every draw). ``--context`` adds comparisons that are not claims (default:
AdaptSeg's and adaptseg-balanced's λ = 0 controls against source-only at k = 0, the arms that
tell continued source training from adaptation), each with its raw p only — they enter no
family.

It changes no verdict file (``--out`` writes its own markdown); it shows which verdicts hang
on the family's size.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.config import load_toml
from fewshot_transfer.harness import claims as jc
from fewshot_transfer.harness.stats import holm
from fewshot_transfer.harness.store import load_records

#: The output-space learners' lambda = 0 controls against source-only at k = 0 (dual-adv's is a
#: claim row already; single-adv's control is bit-identical to it at k = 0 on both draws).
CONTEXT = ["adaptseg-control - source-only @ 0", "adaptseg-balanced-control - source-only @ 0"]


def holm_within(rows: list[dict]) -> list[float]:
    """Holm over ``rows`` (missing comparisons count as p = 1, as in judge_claims.py)."""
    return holm([1.0 if np.isnan(c["p_value"]) else c["p_value"] for c in rows])


def verdict(per_draw: list[dict], key: str) -> str:
    """judge_claims.py's verdict rule, on the Holm p in ``key``."""
    marked = [{**c, "significant": bool(c[key] < jc.ALPHA and not np.isnan(c["mean"]))} for c in per_draw]
    return jc.verdict(marked)


def per_family(claims: list[dict], tables: dict[str, dict]) -> list[dict]:
    """One row per comparison: each draw's numbers with both Holm p's, and both verdicts."""
    everything = [text for claim in claims for text in claim["comparisons"]]
    draws: dict[str, dict[str, dict]] = {}
    for name, table in tables.items():
        rows = {text: jc.compare(table, text) for text in everything}
        for text, p in zip(everything, holm_within([rows[t] for t in everything])):
            rows[text]["p_table"] = p
        for claim in claims:
            own = claim["comparisons"]
            for text, p in zip(own, holm_within([rows[t] for t in own])):
                rows[text]["p_claim"] = p
        draws[name] = rows
    out = []
    for claim in claims:
        for text in claim["comparisons"]:
            per_draw = [draws[name][text] for name in tables]
            out.append(
                {
                    "claim": claim["name"],
                    "family": len(claim["comparisons"]),
                    "comparison": text,
                    "draws": per_draw,
                    "verdict_table": verdict(per_draw, "p_table"),
                    "verdict_claim": verdict(per_draw, "p_claim"),
                }
            )
    return out


def fmt(c: dict, *keys: str) -> str:
    if np.isnan(c["mean"]):
        return f"— (n = {c['n']})"
    ps = ", ".join(f"{label} {c[key]:.2g}" for key, label in keys)
    return f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}], {ps}"


def markdown(rows: list[dict], context: list[tuple[str, list[dict]]], names: list[str], n_table: int) -> str:
    keys = (("p_value", "p"), ("p_claim", "claim-Holm"), ("p_table", "table-Holm"))
    head = ["comparison", "family", *[f"draw {d}" for d in names], f"verdict (table, {n_table})", "verdict (claim)"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        flag = " **←**" if r["verdict_claim"] != r["verdict_table"] else ""
        lines.append(
            f"| {r['comparison']} | {r['family']} | "
            + " | ".join(fmt(c, *keys) for c in r["draws"])
            + f" | {r['verdict_table']} | {r['verdict_claim']}{flag} |"
        )
    if context:
        lines += ["", "Context (not claims; raw p, in no family):", ""]
        lines += ["| comparison | " + " | ".join(f"draw {d}" for d in names) + " |", "|" + "---|" * (1 + len(names))]
        for text, per_draw in context:
            lines.append(f"| {text} | " + " | ".join(fmt(c, ("p_value", "p")) for c in per_draw) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", default="configs/claims.toml", help="TOML with [[claim]] name / comparisons")
    ap.add_argument("--draw", action="append", required=True, metavar="NAME=RUN_DIR", help="one data draw (repeat)")
    ap.add_argument(
        "--context",
        action="append",
        default=None,
        metavar="COMPARISON",
        help='extra comparison shown with its raw p, e.g. "adaptseg-control - source-only @ 0" (repeat; '
        "default: the output-space learners' lambda = 0 controls against source-only at k = 0)",
    )
    ap.add_argument("--out", help="also write the tables (with the command) to this markdown file")
    args = ap.parse_args(argv)
    claims = load_toml(Path(args.claims)).get("claim", [])
    if not claims:
        raise SystemExit(f"{args.claims}: no [[claim]] tables")
    tables: dict[str, dict] = {}
    for item in args.draw:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--draw {item!r}: expected NAME=RUN_DIR")
        tables[name] = dict(jc.dice_by_seed(load_records([Path(path)])))
    rows = per_family(claims, tables)
    context = [(text, [jc.compare(t, text) for t in tables.values()]) for text in (args.context or CONTEXT)]
    n_table = sum(len(c["comparisons"]) for c in claims)
    moved = [r for r in rows if r["verdict_claim"] != r["verdict_table"]]
    text = (
        markdown(rows, context, list(tables), n_table)
        + f"\n{len(moved)} of {len(rows)} verdicts change when each claim is its own Holm family "
        f"(marked **←**); the table-wide family ({n_table} comparisons per draw) is the one judge_claims.py uses.\n"
    )
    print(text, end="")
    if args.out:
        command = "python scripts/claims_per_family.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        head = (
            "# The seed's claims, each claim its own Holm family\n\n"
            f"Command (from the repository root): `{command}`\n\n"
            "Paired difference of Dice over seeds, mean [95% t-CI]; p = paired t-test; claim-Holm = Holm within "
            "the comparison's `[[claim]]` table of the claims file (family size in the second column); "
            f"table-Holm = Holm over all {n_table} comparisons, as in `claims.md`. Verdicts by the rule of "
            "`scripts/judge_claims.py` on either family.\n\n"
        )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, head + text)


if __name__ == "__main__":
    main()
