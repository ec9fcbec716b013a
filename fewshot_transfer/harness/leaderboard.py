"""Cell records -> leaderboard rows: Dice with 95% CIs, paired transfer gain, collapse flags, ranks.

Statistics follow the benchmark protocol: the unit of replication is the seed (one
support set per seed and k), so intervals are Student-t over seeds, and the transfer
gain over ``scratch`` is a *paired* difference on the same support sets. Ranks are
per k with ties: a learner's rank is 1 + the number of learners significantly better
than it (paired t-test over seeds, alpha 0.05), so indistinguishable learners share one.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from fewshot_transfer.harness.runner import reproduce_command
from fewshot_transfer.harness.stats import mean_ci, paired_diff, rank_with_ties
from fewshot_transfer.harness.store import atomic_write_text, write_csv

log = logging.getLogger(__name__)

#: A learner is flagged "collapsed" when its predicted lesion fraction on the test set
#: falls below this share of the true fraction (the AdaptSeg failure mode).
COLLAPSE_RATIO = 0.2
BASELINE = "scratch"


def _dedupe(records: list[dict]) -> list[dict]:
    """One record per (learner, k_label, seed); later run dirs win, with a warning on conflict."""
    seen: dict[tuple, dict] = {}
    for r in records:
        key = (r["learner"], r["k_label"], r["seed"])
        if key in seen and seen[key].get("provenance", {}).get("data") != r.get("provenance", {}).get("data"):
            log.warning("cell %s appears in several runs with different data; keeping %s", key, r.get("run_dir"))
        seen[key] = r
    return list(seen.values())


def _k_columns(records: list[dict]) -> list[tuple[str, int]]:
    ks = {(r["k_label"], int(r["k"])) for r in records if r["k_label"] != "any"}
    return sorted(ks, key=lambda t: (t[1], t[0]))


def build_rows(records: list[dict]) -> list[dict]:
    """Aggregate cells into one row per (learner, k); k-independent learners appear at every k."""
    records = _dedupe(records)
    ks = _k_columns(records)
    by_cell: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    learner_order: list[str] = []
    for r in records:
        if r["learner"] not in learner_order:
            learner_order.append(r["learner"])
        labels = [label for label, _ in ks] if r["k_label"] == "any" else [r["k_label"]]
        for label in labels:
            by_cell[(r["learner"], label)][int(r["seed"])] = r
    rows: list[dict] = []
    for label, k in ks:
        scratch = by_cell.get((BASELINE, label), {})
        dice_by_learner: dict[str, list[float]] = {}
        common_seeds = None
        for name in learner_order:
            cells = by_cell.get((name, label))
            if not cells:
                continue
            ok = {s: r for s, r in cells.items() if r["status"] == "ok"}
            failed = {s: r for s, r in cells.items() if r["status"] != "ok"}
            seeds = sorted(ok)
            dice = [float(ok[s]["metrics"]["dice"]) for s in seeds]
            m, lo, hi = mean_ci(dice) if dice else (math.nan, math.nan, math.nan)
            gm, glo, ghi = mean_ci([float(ok[s]["metrics"]["dice_global"]) for s in seeds]) if seeds else (math.nan,) * 3
            pred_f = float(np.mean([ok[s]["metrics"]["pred_fraction"] for s in seeds])) if seeds else math.nan
            true_f = float(np.mean([ok[s]["metrics"]["true_fraction"] for s in seeds])) if seeds else math.nan
            hd95 = float(np.nanmean([ok[s]["metrics"]["hd95"] for s in seeds])) if seeds else math.nan
            gain = {"mean": math.nan, "lo": math.nan, "hi": math.nan, "p_value": math.nan, "n": 0}
            paired = [s for s in seeds if s in scratch and scratch[s]["status"] == "ok"]
            if name != BASELINE and paired:
                gain = paired_diff(
                    [float(ok[s]["metrics"]["dice"]) for s in paired],
                    [float(scratch[s]["metrics"]["dice"]) for s in paired],
                )
            any_rec = next(iter(cells.values()))
            row = {
                "learner": name,
                "family": any_rec.get("family", ""),
                "k": k,
                "k_label": label,
                "labeled_fraction": (k / any_rec["support_pool_size"]) if any_rec.get("support_pool_size") else math.nan,
                "n_seeds": len(seeds),
                "n_failed": len(failed),
                "failures": "; ".join(f"seed {s}: {r.get('reason', '')}" for s, r in sorted(failed.items())),
                "dice": m,
                "dice_lo": lo,
                "dice_hi": hi,
                "dice_global": gm,
                "hd95": hd95,
                "hd95_unit": any_rec.get("hd95_unit", "px"),
                "gain": gain["mean"],
                "gain_lo": gain["lo"],
                "gain_hi": gain["hi"],
                "gain_p": gain.get("p_value", math.nan),
                "pred_fraction": pred_f,
                "true_fraction": true_f,
                "collapsed": bool(seeds) and pred_f < COLLAPSE_RATIO * true_f,
                "tuned_from": any_rec.get("tuned_from") or "",
                "protocol": any_rec.get("protocol"),
                "command": reproduce_command(
                    any_rec.get("run_dir", "."), name, label, seeds or sorted(cells),
                    any_rec.get("provenance", {}).get("threads"),
                ),
                "seeds": seeds,
            }
            rows.append(row)
            dice_by_learner[name] = dict(zip(seeds, dice))  # type: ignore[assignment]
            common_seeds = set(seeds) if common_seeds is None else common_seeds & set(seeds)
        if dice_by_learner and common_seeds:
            ordered = sorted(common_seeds)
            ranks = rank_with_ties({n: [d[s] for s in ordered] for n, d in dice_by_learner.items()})  # type: ignore[index]
            for row in rows:
                if row["k_label"] == label and row["learner"] in ranks:
                    row["rank"] = ranks[row["learner"]]
    return rows


def fmt_ci(m: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.612 ± 0.041`` (half-width of the CI); ``n/a`` when undefined."""
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    if lo is None or math.isnan(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def fmt_gain(row: dict) -> str:
    if row["learner"] == BASELINE or math.isnan(row["gain"]):
        return "—"
    s = fmt_ci(row["gain"], row["gain_lo"], row["gain_hi"])
    s = s if s.startswith("-") else "+" + s
    if not math.isnan(row["gain_lo"]) and (row["gain_lo"] > 0 or row["gain_hi"] < 0):
        s += " *"
    return s


MD_HEADER = (
    "| rank | learner | k | labeled frac | Dice (mean ± 95% CI) | gain vs scratch | p | global Dice | HD95 | pred / true lesion frac | seeds | notes |\n"
    "|---:|---|---:|---:|---|---|---:|---:|---:|---|---:|---|\n"
)


def row_notes(row: dict) -> str:
    notes = []
    if row["collapsed"]:
        notes.append("**collapsed**")
    if row["n_failed"]:
        notes.append(f"{row['n_failed']} failed")
    if row["tuned_from"]:
        notes.append(f"tuned ({row['tuned_from']})")
    return ", ".join(notes)


def to_markdown(
    rows: list[dict], title: str = "Leaderboard", meta: dict | None = None, sections: list[str] | None = None
) -> str:
    """Leaderboard as Markdown, grouped by k, with the reproduce command of every row."""
    out = [f"# {title}\n"]
    if meta:
        out.append("\n".join(f"- **{k}**: {v}" for k, v in meta.items()) + "\n")
    out.append(
        "\nDice = mean over lesion-positive test slices, averaged over seeds (95% Student-t CI over seeds). "
        "Gain = learner − scratch, paired by seed (same support set); `*` = CI excludes 0. "
        f"Collapsed = predicted lesion fraction < {COLLAPSE_RATIO:.0%} of the true one. "
        "Rank = 1 + number of learners significantly better (paired t-test, α = 0.05).\n"
    )
    for label in dict.fromkeys(r["k_label"] for r in rows):
        sub = sorted((r for r in rows if r["k_label"] == label), key=lambda r: (r.get("rank", 99), -np.nan_to_num(r["dice"])))
        out.append(f"\n## k = {label}\n\n" + MD_HEADER)
        for r in sub:
            out.append(
                f"| {r.get('rank', '')} | {r['learner']} | {r['k']} | {r['labeled_fraction']:.3f} | {fmt_ci(r['dice'], r['dice_lo'], r['dice_hi'])} "
                f"| {fmt_gain(r)} | {'' if math.isnan(r['gain_p']) else format(r['gain_p'], '.3g')} | {r['dice_global']:.3f} | {r['hd95']:.1f} {r['hd95_unit']} "
                f"| {r['pred_fraction']:.4f} / {r['true_fraction']:.4f} | {r['n_seeds']} | {row_notes(r)} |\n"
            )
    for text in sections or []:
        out.append("\n" + text.rstrip() + "\n")
    out.append("\n## Reproduce\n\nEach row is recomputed by:\n\n")
    for r in rows:
        out.append(f"- {r['learner']} k={r['k_label']}: `{r['command']}`\n")
    return "".join(out)


def write_leaderboard(
    out_dir: Path, rows: list[dict], meta: dict | None = None, sections: list[str] | None = None
) -> list[Path]:
    """Write ``leaderboard.md``, ``.csv`` and ``.json`` atomically; returns the paths."""
    out_dir = Path(out_dir)
    md = out_dir / "leaderboard.md"
    atomic_write_text(md, to_markdown(rows, meta=meta, sections=sections))
    csv_path = out_dir / "leaderboard.csv"
    flat = [{**r, "seeds": " ".join(map(str, r["seeds"]))} for r in rows]
    write_csv(csv_path, flat)
    js = out_dir / "leaderboard.json"
    atomic_write_text(js, json.dumps({"meta": meta or {}, "rows": rows}, indent=1, default=_json_default))
    return [md, csv_path, js]


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def rich_table(rows: list[dict], title: str = "ftbench leaderboard"):
    """A rich Table, one row per (k, learner): Dice ± CI, gain vs scratch ± CI, lesion fractions.

    Long format so it stays readable in an 80-column terminal or a CI log, whatever the
    number of k values; learners are sorted by Dice within each k.
    """
    from rich.table import Table

    table = Table(title=title, caption="± = 95% CI half-width over seeds; * = gain CI excludes 0; pred/true % = lesion share of test pixels")
    for col, justify in (("k", "right"), ("learner", "left"), ("Dice", "right"), ("gain vs scratch", "right"),
                         ("pred/true %", "right"), ("n", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    labels = list(dict.fromkeys(r["k_label"] for r in rows))
    for i, label in enumerate(labels):
        sub = sorted((r for r in rows if r["k_label"] == label), key=lambda r: -np.nan_to_num(r["dice"], nan=-1))
        for j, r in enumerate(sub):
            dice = fmt_ci(r["dice"], r["dice_lo"], r["dice_hi"])
            if r["collapsed"]:
                dice = f"[red]{dice} collapsed[/red]"
            elif r["n_failed"]:
                dice = f"{dice} [yellow]({r['n_failed']} failed)[/yellow]"
            gain = fmt_gain(r)
            if gain.endswith("*"):
                gain = f"[green]{gain}[/green]" if r["gain"] > 0 else f"[red]{gain}[/red]"
            frac = f"{100 * r['pred_fraction']:.2f}/{100 * r['true_fraction']:.2f}"
            table.add_row(label if j == 0 else "", r["learner"], dice, gain, frac, str(r["n_seeds"]),
                          end_section=j == len(sub) - 1 and i < len(labels) - 1)
    return table
