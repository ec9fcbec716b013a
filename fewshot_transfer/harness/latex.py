"""Leaderboard rows as LaTeX tables a paper can paste: one booktabs table per k.

Each table lists rank, learner, selection rule, Dice and the paired gain over the reference
as mean ± the 95% Student-t half-width (``interval="ci"``) or ± the standard error
(``interval="se"``, recovered from the same t-interval: half-width / t(0.975, n - 1)), and
the number of seeds. Rows chosen on the test set carry an ORACLE mark and a footnote.
Needs ``\\usepackage{booktabs}``.
"""

from __future__ import annotations

import math

from scipy import stats

from fewshot_transfer.harness.selection import DEFAULTS, is_oracle

INTERVALS = ("ci", "se")
ORACLE_CELL = r"\textbf{ORACLE}$^\dagger$"
#: Footnotes of the selection rules a table shows (harness/selection.py).
NOTES = {
    "oracle": r"$^\dagger$ ORACLE: hyperparameters selected on the test set, an upper bound and not a result.",
    "val": r"val: selected on a labeled target validation split (more labels than $k$).",
    "shots": r"shots: selected by 2-fold cross-validation over the $k$ shots.",
    "source-val": r"source-val: selected on the source domain's validation split.",
}
_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (learner names, k labels such as ``25%``)."""
    return "".join(_ESCAPES.get(c, c) for c in str(text))


def spread(lo: float, hi: float, n: int, interval: str) -> float:
    """The ± of a mean: the 95% t half-width, or the standard error behind it."""
    if interval not in INTERVALS:
        raise ValueError(f"--interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
    if lo is None or math.isnan(lo) or n < 2:
        return math.nan
    half = (hi - lo) / 2
    return half if interval == "ci" else half / float(stats.t.ppf(0.975, df=n - 1))


def _pm(mean: float, lo: float, hi: float, n: int, interval: str, signed: bool = False) -> str:
    if mean is None or math.isnan(mean):
        return "--"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    text = text.replace("-", "$-$")
    s = spread(lo, hi, n, interval)
    return text if math.isnan(s) else f"{text} $\\pm$ {s:.3f}"


def to_latex(rows: list[dict], *, interval: str = "ci", caption: str = "") -> str:
    """One ``table`` per k (in the rows' order), learners sorted by rank then Dice."""
    spread(0.0, 0.0, 2, interval)  # validates the name before any output
    what = "95\\% CI half-width" if interval == "ci" else "standard error"
    out: list[str] = [f"% Written by `ftbench leaderboard --latex` (mean $\\pm$ {what} over seeds); needs booktabs.\n"]
    labels = list(dict.fromkeys((r["k_label"], r["k"]) for r in rows))
    for label, k in labels:
        rules: set[str] = set()
        sub = [r for r in rows if r["k_label"] == label and r.get("applicable", True)]
        sub.sort(key=lambda r: (r.get("rank", 99), -(r["dice"] if not math.isnan(r["dice"]) else -1)))
        ref = next((r["gain_ref"] for r in sub if r.get("gain_ref")), "")
        title = (f"{escape(caption)}, " if caption else "") + f"k = {escape(label)}"
        title += " (no target labels)" if k == 0 else ""
        out += [
            "\\begin{table}[t]\n\\centering\n",
            f"\\caption{{{title}: Dice and gain over {escape(ref)} (mean $\\pm$ {what}, paired by seed).}}\n",
            f"\\label{{tab:ftbench-k{str(label).replace('%', 'pct')}}}\n",
            "\\begin{tabular}{rllccr}\n\\toprule\n",
            "Rank & Learner & Selection & Dice & Gain & $n$ \\\\\n\\midrule\n",
        ]
        for r in sub:
            rule = str(r.get("selection_rule") or DEFAULTS)
            rules.add(rule)
            if r["learner"] == r.get("gain_ref"):
                gain = "reference"
            else:
                gain = _pm(r["gain"], r["gain_lo"], r["gain_hi"], r["n_seeds"], interval, signed=True)
            dice = _pm(r["dice"], r["dice_lo"], r["dice_hi"], r["n_seeds"], interval)
            shown = ORACLE_CELL if is_oracle(rule) else escape(rule)
            out.append(
                f"{r.get('rank', '')} & {escape(r['learner'])} & {shown} & {dice} & {gain} & {r['n_seeds']} \\\\\n"
            )
        out.append("\\bottomrule\n\\end{tabular}\n")
        notes = [NOTES[rule] for rule in sorted(rules) if rule in NOTES]
        if notes:
            out.append("\\par\\footnotesize " + " ".join(notes) + "\n")
        out.append("\\end{table}\n\n")
    return "".join(out)
