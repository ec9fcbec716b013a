"""How much do the ranking and the gains move when another rule selects the hyperparameters?

    python scripts/compare_selection.py --out results/selection
    python scripts/compare_selection.py --out runs/sel-tiny --rules val,shots -- --seeds 2 --set train.steps=5

Runs ``ftbench run --protocol tuned --selection RULE --out OUT/selection-RULE ARGS`` for each
rule (default ``val,shots,source-val``; the same seeds, shots and learners for every rule:
the default learner set unless ARGS say otherwise; a finished run resumes, so rerunning only
writes the report), merges them with ``ftbench leaderboard ... --latex`` into ``OUT/merged``
(every learner as ``NAME [RULE]``) and writes ``OUT/selection.md``: per k, each learner's
Dice, rank and gain under every rule, how far its rank and gain move from the first rule,
Kendall's tau between the rules' orderings, the compute each rule's run spent, and what
each study's score rewarded (Spearman's rho of the score with each searched number).
``--report-only`` skips the runs and reads what is there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState
from scipy import stats

from fewshot_transfer.cli import main as ftbench
from fewshot_transfer.harness.selection import RULES
from fewshot_transfer.harness.store import CellStore
from fewshot_transfer.tuning.storage import default_storage, make_storage


def run_rules(out: Path, rules: list[str], extra: list[str]) -> None:
    """Each rule's run (resumed when present)."""
    for rule in rules:
        args = ["run", "--protocol", "tuned", "--selection", rule, "--out", str(out / f"selection-{rule}"), *extra]
        if ftbench(args) != 0:
            raise SystemExit(f"ftbench {' '.join(args)} failed")


def studies(run_dir: Path) -> list[optuna.Study]:
    """The Optuna studies of a rule's run (none when it was not tuned)."""
    tune_dir = run_dir / "tuning"
    if not (tune_dir / "study.db").is_file():
        return []
    storage = make_storage(default_storage(tune_dir), heartbeat=None, grace=None)
    return [
        optuna.load_study(study_name=s.study_name, storage=storage) for s in optuna.get_all_study_summaries(storage)
    ]


def work_seconds(run_dir: Path, run_studies: list[optuna.Study]) -> tuple[float, float]:
    """(tuning, grid) process-seconds a rule's run spent, read from its artefacts so that
    resuming a run neither resets nor double-counts them: the durations of its finished
    (complete or pruned) trials, and its cells' fit + evaluation seconds (a pretraining or
    meta-training counts where it was computed, not where a cache hit charged it)."""
    tuning = 0.0
    for study in run_studies:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        tuning += sum(t.duration.total_seconds() for t in done if t.duration is not None)
    grid = sum(r["timing"]["fit_s"] + r["timing"]["eval_s"] for r in CellStore(run_dir).records() if "timing" in r)
    return tuning, grid


def rewards(loaded: dict[str, list[optuna.Study]]) -> list[str]:
    """What each study's score rewarded: Spearman's rho between the score and every searched
    number over the study's complete draws, and where the pick's lr lies among the lrs drawn.
    A rule whose score falls with the lr rewards staying near the initialisation."""
    lines = [
        "\n## What each rule's score rewarded\n\n",
        "Spearman's ρ between a study's score and each searched number over its complete draws; "
        "'pick lr rank' = the rank of the chosen lr among the lrs drawn (1 = smallest); "
        "'strongest other' = the other number with the largest |ρ|.\n\n",
        "| rule | study | draws | ρ(lr) | pick lr rank | strongest other (ρ) |\n",
        "|---|---|---:|---:|---:|---|\n",
    ]
    for rule, run_studies in loaded.items():
        for study in run_studies:
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(done) < 3:
                continue
            score = [t.value for t in done]
            rho = {}
            for name in done[0].params:
                xs = [t.params.get(name) for t in done]
                if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs) and len(set(xs)) > 1:
                    rho[name] = stats.spearmanr(xs, score).statistic
            lr = rho.pop("lr", float("nan"))
            rank = "—"
            if "lr" in study.best_params:
                drawn = sorted(t.params["lr"] for t in done)
                rank = f"{drawn.index(study.best_params['lr']) + 1} of {len(drawn)}"
            other = max(rho, key=lambda n: abs(rho[n]), default=None)
            other_txt = "—" if other is None else f"{other} ({rho[other]:+.2f})"
            lines.append(
                f"| {rule} | {study.study_name} | {len(done)} | {_fmt(lr, signed=True)} | {rank} | {other_txt} |\n"
            )
    return lines


def load_rows(out: Path, rule: str) -> list[dict]:
    path = out / f"selection-{rule}" / "leaderboard.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run without --report-only first")
    return json.loads(path.read_text())["rows"]


def _fmt(v: float, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def report(out: Path, rules: list[str]) -> str:
    """The Markdown comparison of the rules' leaderboards (first rule = the baseline of the moves)."""
    rows = {rule: load_rows(out, rule) for rule in rules}
    base = rules[0]
    lines = [
        "# Selection rules compared\n",
        f"Runs: {', '.join(f'`{out}/selection-{r}`' for r in rules)}; merged leaderboard and LaTeX in `{out}/merged`. "
        f"Moves are against `{base}`. Dice = mean over seeds; rank = 1 + learners significantly better "
        "(Holm); gain = paired difference over the reference of the same rule.\n",
    ]
    loaded = {rule: studies(out / f"selection-{rule}") for rule in rules}
    spent = {rule: work_seconds(out / f"selection-{rule}", loaded[rule]) for rule in rules}
    lines.append(
        "\nCompute spent, in process-seconds summed over the run's finished trials and cells (not wall "
        "time: `--jobs N` runs N at once; resumptions neither reset nor double-count it): "
        + "; ".join(f"{r} {t:.0f} tuning + {g:.0f} grid" for r, (t, g) in spent.items())
        + f"; total {sum(t + g for t, g in spent.values()):.0f} s.\n"
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
    lines += rewards(loaded)
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
    if not args.report_only:
        run_rules(args.out, rules, extra)
    dirs = [str(args.out / f"selection-{r}") for r in rules]
    if ftbench(["leaderboard", *dirs, "--out", str(args.out / "merged"), "--latex"]) != 0:
        raise SystemExit("ftbench leaderboard failed")
    text = report(args.out, rules)
    (args.out / "selection.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
