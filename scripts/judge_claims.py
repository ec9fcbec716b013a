"""Judge a list of claims (paired comparisons of learners) on one or more data draws.

    python scripts/judge_claims.py --claims configs/claims.toml \\
        --draw 0=results/claims --draw 1=results/claims-replication --out results/claims/claims.md

A claim is a list of comparisons ``"LEARNER - REFERENCE @ K"`` (``configs/claims.toml``:
the seed paper's claims, each learner against its own control arm). On every draw each
comparison is a paired t-test over the seeds both rows have (training replicates averaged
per seed first; ``source-only`` serves every k), Holm-corrected over every comparison of
the file on that draw. Verdict per comparison, over the draws:

* **supported** — Holm p < 0.05 with a positive mean on every draw;
* **reversed** — Holm p < 0.05 with a negative mean on every draw;
* **not replicated** — significant on some draws only (or in opposite directions);
* **no effect detected** — significant on none; the table then gives the largest effect
  the CIs leave room for (max |CI bound| over the draws), which is what the null rules out.

Writes the markdown table to ``--out`` and the numbers beside it as JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.config import load_toml
from fewshot_transfer.harness.stats import holm, paired_diff, parse_comparison
from fewshot_transfer.harness.store import load_records

ALPHA = 0.05
#: Learners whose one cell serves every k (trained on no target label).
K_INDEPENDENT = {"source-only"}


def dice_by_seed(records: list[dict]) -> dict[tuple[str, int], dict[int, float]]:
    """(learner, k) -> {seed: Dice averaged over training replicates} of the finished cells."""
    acc: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for r in records:
        if r.get("status") == "ok":
            k = -1 if r["learner"] in K_INDEPENDENT else int(r["k"])
            acc[(r["learner"], k, int(r["seed"]))].append(float(r["metrics"]["dice"]))
    out: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for (name, k, seed), values in acc.items():
        out[(name, k)][seed] = float(np.mean(values))
    return out


def compare(table: dict, text: str) -> dict:
    """The paired difference of one comparison on one draw (NaNs when a row is missing)."""
    a, b, k = parse_comparison(text)
    rows = [table.get((n, -1 if n in K_INDEPENDENT else k), {}) for n in (a, b)]
    seeds = sorted(set(rows[0]) & set(rows[1]))
    if len(seeds) < 2:
        return {"comparison": text, "mean": np.nan, "lo": np.nan, "hi": np.nan, "n": len(seeds), "p_value": np.nan}
    d = paired_diff([rows[0][s] for s in seeds], [rows[1][s] for s in seeds])
    return {"comparison": text, **{key: d[key] for key in ("mean", "lo", "hi", "n", "p_value")}}


def judge_draw(table: dict, comparisons: list[str]) -> list[dict]:
    """Every comparison on one draw, Holm-corrected over all of them (missing ones count as p = 1)."""
    out = [compare(table, text) for text in comparisons]
    for c, p in zip(out, holm([1.0 if np.isnan(c["p_value"]) else c["p_value"] for c in out])):
        c["p_holm"] = p
        c["significant"] = bool(p < ALPHA and not np.isnan(c["mean"]))
    return out


def verdict(per_draw: list[dict]) -> str:
    if any(np.isnan(c["mean"]) for c in per_draw):
        return "incomplete"
    signs = {np.sign(c["mean"]) for c in per_draw if c["significant"]}
    if all(c["significant"] for c in per_draw) and len(signs) == 1:
        return "supported" if signs == {1.0} else "reversed"
    if signs:
        return "not replicated"
    return "no effect detected"


def judge(claims: list[dict], draws: dict[str, list[dict]]) -> list[dict]:
    """One row per comparison: each draw's numbers and the verdict over the draws."""
    comparisons = [text for claim in claims for text in claim["comparisons"]]
    tables = {name: dict(dice_by_seed(records)) for name, records in draws.items()}
    judged = {name: {c["comparison"]: c for c in judge_draw(t, comparisons)} for name, t in tables.items()}
    rows = []
    for claim in claims:
        for text in claim["comparisons"]:
            per_draw = [judged[name][text] for name in draws]
            bound = max((max(abs(c["lo"]), abs(c["hi"])) for c in per_draw if not np.isnan(c["mean"])), default=np.nan)
            rows.append(
                {
                    "claim": claim["name"],
                    "comparison": text,
                    "draws": per_draw,
                    "verdict": verdict(per_draw),
                    "bound": bound,
                }
            )
    return rows


def markdown(rows: list[dict], draw_names: list[str], command: str) -> str:
    def cell(c: dict) -> str:
        if np.isnan(c["mean"]):
            return f"— (n = {c['n']})"
        star = " *" if c["significant"] else ""
        return f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]{star}, Holm p {c['p_holm']:.3g}, n = {c['n']}"

    head = ["claim", "comparison", *[f"draw {d}" for d in draw_names], "verdict", "largest effect the CIs allow"]
    lines = [
        "# The seed's claims, each against its own control, on independent data draws",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        "Paired difference of Dice over seeds, mean [95% t-CI]; Holm over every comparison of the table on "
        "that draw; `*` = Holm p < 0.05. Verdicts: supported / reversed = significant the same way on every "
        "draw; not replicated = significant on some draws only; no effect detected = on none.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        bound = "" if np.isnan(r["bound"]) else f"±{r['bound']:.3f}"
        lines.append(
            f"| {r['claim']} | {r['comparison']} | "
            + " | ".join(cell(c) for c in r["draws"])
            + f" | {r['verdict']} | {bound} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", default="configs/claims.toml", help="TOML with [[claim]] name / comparisons")
    ap.add_argument("--draw", action="append", required=True, metavar="NAME=RUN_DIR", help="one data draw (repeat)")
    ap.add_argument("--out", required=True, help="markdown table (a .json with the numbers is written beside it)")
    args = ap.parse_args(argv)
    claims = load_toml(Path(args.claims)).get("claim", [])
    if not claims:
        raise SystemExit(f"{args.claims}: no [[claim]] tables")
    for claim in claims:
        for text in claim["comparisons"]:
            parse_comparison(text)
    draws: dict[str, list[dict]] = {}
    for item in args.draw:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--draw {item!r}: expected NAME=RUN_DIR")
        draws[name] = load_records([Path(path)])
    rows = judge(claims, draws)
    command = "python scripts/judge_claims.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, markdown(rows, list(draws), command))
    atomic_write_text(
        out.with_suffix(".json"), json.dumps({"command": command, "rows": rows}, indent=2, default=float) + "\n"
    )
    print(out.read_text())


if __name__ == "__main__":
    main()
