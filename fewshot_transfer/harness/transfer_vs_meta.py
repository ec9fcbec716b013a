"""Report section: transfer (``finetune``) vs meta-learning (``maml``, or the first of
reptile / fomaml / metasgd the run has) across k, and what
meta-training adds to each meta-learner over its control.

Registered in :mod:`fewshot_transfer.harness.report`; appended to ``leaderboard.md``
whenever a run has both finetune and maml cells. At the common budget ``maml`` runs
finetune's own test-time loop from its meta-trained init, so ``finetune`` *is* maml's
0-meta-step control and maml − finetune is exactly what meta-training adds. Both learners
of one seed adapt on the same k shots from a model built on the same CAP data, so they are
compared *paired by episode* (seed):

* side by side per k: Dice (mean ± 95% CI over seeds) and the paired difference
  maml − finetune with its t-interval and p;
* the per-episode correlation of their Dice (Pearson and Spearman over all (k, seed)
  episodes, and per k where there are >= 3 seeds): do the two approaches find the same
  support sets easy and hard?
* the crossover: the leader at the smallest k is whoever has the higher mean there; the
  other one "overtakes" at the first larger k whose paired-difference CI excludes 0 in
  its favour. Otherwise: "no crossover within the k range measured".

Every other meta-learner in the run gets one line: its paired difference to its control
(the same test-time adaptation from the source model with 0 meta-steps): ``finetune`` for
full-network learners, ``anil-control`` for ``anil``. ``anil-control`` itself is shown
against finetune (what adapting only the head costs), and ``maml-fewstep`` against
finetune with a note: it adapts with far fewer target steps, so that difference is not a
control comparison.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import stats

from fewshot_transfer.harness.stats import mean_ci, paired_diff

TRANSFER, META = "finetune", "maml"
#: The meta-learner set against finetune, by preference: the first one the run has (the
#: default learner set has reptile, not maml). Each of them adapts with finetune's loop and
#: budget, so finetune is its 0-meta-step control.
META_PREFERENCE = ("maml", "reptile", "fomaml", "metasgd")
#: A meta-learner's 0-meta-step control where it is not finetune.
CONTROLS = {"anil": "anil-control"}
#: Rows compared with finetune although it is not their control, and why.
NOT_CONTROLS = {
    "anil-control": "head-only vs full fine-tuning, both without meta-training",
    "maml-fewstep": "few SGD steps vs the common budget: not a control comparison",
}


def _fmt(m: float, lo: float, hi: float) -> str:
    if math.isnan(m):
        return "n/a"
    if math.isnan(lo):
        return f"{m:.3f}"
    return f"{m:.3f} ± {(hi - lo) / 2:.3f}"


def _fmt_diff(d: dict) -> str:
    if d["n"] == 0 or math.isnan(d["mean"]):
        return "n/a"
    s = f"{d['mean']:+.3f}"
    if not math.isnan(d["lo"]):
        s += f" [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        if d["lo"] > 0 or d["hi"] < 0:
            s += " *"
    return s


def _corr(a: list[float], b: list[float]) -> tuple[float, float, int]:
    x, y = np.asarray(a, float), np.asarray(b, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan, math.nan, int(x.size)
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0]), int(x.size)


def episode_dice(records: list[dict]) -> dict[str, dict[tuple[str, int], dict[int, float]]]:
    """learner -> (k_label, k) -> seed -> Dice, from ok cells (later records win)."""
    out: dict[str, dict[tuple[str, int], dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.get("status") != "ok" or r.get("k_label") == "any":
            continue
        out[r["learner"]][(str(r["k_label"]), int(r["k"]))][int(r["seed"])] = float(r["metrics"]["dice"])
    return out


def crossover(diffs: list[tuple[str, dict]], meta: str = META) -> str:
    """Who overtakes whom (see module docstring); ``diffs`` are (k_label, meta−finetune) by k."""
    usable = [(label, d) for label, d in diffs if d["n"] and not math.isnan(d["mean"])]
    if not usable:
        return "no paired episodes"
    first_label, first = usable[0]
    if first["mean"] == 0:
        return "no crossover within the k range measured (tie at the smallest k)"
    leader, other = (meta, TRANSFER) if first["mean"] > 0 else (TRANSFER, meta)
    for label, d in usable[1:]:
        if math.isnan(d["lo"]):
            continue
        if (leader == meta and d["hi"] < 0) or (leader == TRANSFER and d["lo"] > 0):
            return f"**{other} overtakes {leader} at k = {label}** (paired CI of {meta} − finetune excludes 0)"
    return (
        f"no crossover within the k range measured ({leader} leads at k = {first_label}"
        f"{' significantly' if not math.isnan(first['lo']) and (first['lo'] > 0 or first['hi'] < 0) else ''}; "
        f"{other} never significantly ahead at a larger k)"
    )


def transfer_vs_meta(rows: list[dict], records: list[dict]) -> str | None:
    """Markdown for finetune vs the run's meta-learner (maml, else reptile, ...), or None without both."""
    dice = episode_dice(records)
    meta = next((name for name in META_PREFERENCE if name in dice), None)
    if TRANSFER not in dice or meta is None:
        return None
    ks = sorted(set(dice[TRANSFER]) & set(dice[meta]), key=lambda t: (t[1], t[0]))
    if not ks:
        return None
    out = [
        f"## Transfer vs meta-learning (finetune vs {meta})\n",
        (
            f"{meta} adapts with finetune's own test-time loop and budget from its meta-trained init, so "
            f"finetune is {meta} with 0 meta-steps and {meta} − finetune is what meta-training adds (when "
            "both run at the same lr: a tuned run may give them different ones). "
            "Paired by episode (seed: same k shots, same CAP data); mean [95% t-CI], `*` = CI excludes 0.\n"
        ),
        f"| k | finetune Dice | {meta} Dice | {meta} − finetune | p | episodes | r (Pearson) |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    diffs = []
    all_ft, all_ml = [], []
    for label, k in ks:
        ft, ml = dice[TRANSFER][(label, k)], dice[meta][(label, k)]
        seeds = sorted(set(ft) & set(ml))
        a, b = [ml[s] for s in seeds], [ft[s] for s in seeds]
        all_ml += a
        all_ft += b
        d = (
            paired_diff(a, b)
            if seeds
            else {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "p_value": math.nan}
        )
        diffs.append((label, d))
        r, _, _ = _corr(b, a)
        p = "" if math.isnan(d["p_value"]) else f"{d['p_value']:.3g}"
        out.append(
            f"| {label} | {_fmt(*mean_ci(list(ft.values())))} | {_fmt(*mean_ci(list(ml.values())))} | {_fmt_diff(d)} "
            f"| {p} | {d['n']} | {'n/a' if math.isnan(r) else f'{r:+.2f}'} |"
        )
    r, rho, n = _corr(all_ft, all_ml)
    corr = (
        "n/a (fewer than 3 episodes or no spread)"
        if math.isnan(r)
        else f"Pearson r = {r:+.2f}, Spearman ρ = {rho:+.2f} over {n} episodes"
    )
    out.append("")
    out.append(f"- Per-episode correlation of Dice (all k pooled): {corr}.")
    out.append(f"- Crossover: {crossover(diffs, meta)}.")
    others = sorted(n for n in dice if n not in (TRANSFER, meta) and _is_meta(n, records))
    if others:
        out.append(
            "\nWhat meta-training adds: each meta-learner − its control (same test-time adaptation from "
            "the source model, 0 meta-steps), paired by episode:\n"
        )
        out.append("| learner | control | " + " | ".join(f"k = {label}" for label, _ in ks) + " |")
        out.append("|---|---|" + "---|" * len(ks))
        for name in others:
            control = CONTROLS.get(name, TRANSFER)
            if control not in dice:
                out.append(f"| {name} | {control} (not in this run) | " + " | ".join("n/a" for _ in ks) + " |")
                continue
            cells = []
            for label, k in ks:
                ml, ref = dice[name].get((label, k), {}), dice[control].get((label, k), {})
                seeds = sorted(set(ref) & set(ml))
                cells.append(
                    _fmt_diff(paired_diff([ml[s] for s in seeds], [ref[s] for s in seeds])) if seeds else "n/a"
                )
            note = f" ({NOT_CONTROLS[name]})" if name in NOT_CONTROLS else ""
            out.append(f"| {name} | {control}{note} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _is_meta(name: str, records: list[dict]) -> bool:
    return any(r.get("learner") == name and r.get("family") == "meta" for r in records)
