"""How much do the ranking and the gains move when another rule selects the hyperparameters?

    python scripts/compare_selection.py --out results/selection
    python scripts/compare_selection.py --out runs/sel-tiny --rules val,shots -- --seeds 2 --set train.steps=5

Runs ``ftbench run --protocol tuned --selection RULE --out OUT/selection-RULE ARGS`` for each
rule (default ``val,shots,source-val``; the same seeds, shots and learners for every rule:
the default learner set unless ARGS say otherwise; a finished run resumes, so rerunning only
writes the report), merges them with ``ftbench leaderboard ... --latex`` into ``OUT/merged``
(every learner as ``NAME [RULE]``) and writes ``OUT/selection.md``: per k, each learner's
Dice, rank and gain under every rule, how far its rank and gain move from the first rule,
Kendall's tau between the rules' orderings, and the wall seconds each rule's run took.
``--report-only`` skips the runs and reads what is there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from scipy import stats

from fewshot_transfer.cli import main as ftbench
from fewshot_transfer.harness.selection import RULES


def run_rules(out: Path, rules: list[str], extra: list[str]) -> dict[str, float]:
    """Each rule's run (resumed when present); returns its wall seconds (this invocation)."""
    seconds: dict[str, float] = {}
    for rule in rules:
        t0 = time.perf_counter()
        args = ["run", "--protocol", "tuned", "--selection", rule, "--out", str(out / f"selection-{rule}"), *extra]
        if ftbench(args) != 0:
            raise SystemExit(f"ftbench {' '.join(args)} failed")
        seconds[rule] = time.perf_counter() - t0
        (out / f"selection-{rule}" / "compare_wall_s.json").write_text(json.dumps({"wall_s": seconds[rule]}) + "\n")
    return seconds


def saved_seconds(out: Path, rules: list[str]) -> dict[str, float]:
    """The wall seconds the last invocation that ran each rule recorded."""
    found = {}
    for rule in rules:
        path = out / f"selection-{rule}" / "compare_wall_s.json"
        if path.is_file():
            found[rule] = float(json.loads(path.read_text())["wall_s"])
    return found


def load_rows(out: Path, rule: str) -> list[dict]:
    path = out / f"selection-{rule}" / "leaderboard.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run without --report-only first")
    return json.loads(path.read_text())["rows"]


def _fmt(v: float, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def report(out: Path, rules: list[str], seconds: dict[str, float]) -> str:
    """The Markdown comparison of the rules' leaderboards (first rule = the baseline of the moves)."""
    rows = {rule: load_rows(out, rule) for rule in rules}
    base = rules[0]
    lines = [
        "# Selection rules compared\n",
        f"Runs: {', '.join(f'`{out}/selection-{r}`' for r in rules)}; merged leaderboard and LaTeX in `{out}/merged`. "
        f"Moves are against `{base}`. Dice = mean over seeds; rank = 1 + learners significantly better "
        "(Holm); gain = paired difference over the reference of the same rule.\n",
    ]
    if seconds:
        lines.append(
            "\nWall seconds of the invocation that ran each rule (tuning + grid; less when it resumed): "
            + ", ".join(f"{r} {seconds[r]:.0f} s" for r in rules if r in seconds)
            + f"; total {sum(seconds.values()):.0f} s.\n"
        )
    ks = list(dict.fromkeys((r["k_label"], r["k"]) for r in rows[base]))
    for label, _k in ks:
        by = {
            rule: {r["learner"]: r for r in rows[rule] if r["k_label"] == label and r.get("applicable", True)}
            for rule in rules
        }
        learners = list(by[base])
        head = "| learner | " + " | ".join(f"{r}: Dice (rank) | {r}: gain" for r in rules)
        head += " | " + " | ".join(f"Δrank {r} | Δgain {r}" for r in rules[1:]) + " |"
        lines += [f"\n## k = {label}\n\n", head + "\n", "|---" * (1 + 2 * len(rules) + 2 * (len(rules) - 1)) + "|\n"]
        for name in learners:
            cells = []
            for rule in rules:
                r = by[rule].get(name)
                cells.append("—" if r is None else f"{_fmt(r['dice'])} ({r.get('rank', '')})")
                cells.append("—" if r is None else _fmt(r["gain"], signed=True))
            for rule in rules[1:]:
                a, b = by[base].get(name), by[rule].get(name)
                if a is None or b is None or "rank" not in a or "rank" not in b:
                    cells += ["—", "—"]
                    continue
                cells.append(f"{b['rank'] - a['rank']:+d}")
                cells.append(_fmt(b["gain"] - a["gain"], signed=True))
            lines.append(f"| {name} | " + " | ".join(cells) + " |\n")
        for rule in rules[1:]:
            shared = [n for n in learners if n in by[rule]]
            if len(shared) >= 3:
                tau = stats.kendalltau([by[base][n]["dice"] for n in shared], [by[rule][n]["dice"] for n in shared])
                lines.append(
                    f"\nKendall's tau of the Dice orderings, {base} vs {rule}: {tau.statistic:+.2f} "
                    f"({len(shared)} learners).\n"
                )
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/selection"))
    ap.add_argument("--rules", default="val,shots,source-val", help=f"comma list of {', '.join(RULES)}")
    ap.add_argument("--report-only", action="store_true", help="do not run; report on the runs in --out")
    args = ap.parse_args(argv)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    bad = [r for r in rules if r not in RULES]
    if len(rules) < 2 or bad:
        raise SystemExit(f"--rules needs two or more of {', '.join(RULES)}; got {args.rules!r}")
    seconds = saved_seconds(args.out, rules) if args.report_only else run_rules(args.out, rules, extra)
    dirs = [str(args.out / f"selection-{r}") for r in rules]
    if ftbench(["leaderboard", *dirs, "--out", str(args.out / "merged"), "--latex"]) != 0:
        raise SystemExit("ftbench leaderboard failed")
    text = report(args.out, rules, seconds)
    (args.out / "selection.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
