"""Extra metric sets shown beside Dice at 0.5 when asked (``--metrics NAME`` / ``[eval] metrics``).

Every cell stores every set (``harness/runner.py`` ``score``) and the leaderboard rows carry
their means over seeds; this module only decides what is *shown*: one Markdown table per set
appended to ``leaderboard.md`` and one terminal table, each with Dice at 0.5 in the first
column so the two definitions sit side by side. A cell scored before a set existed shows "–".
"""

from __future__ import annotations

import math

import numpy as np

from fewshot_transfer.config import METRIC_SETS
from fewshot_transfer.harness.leaderboard import k_title
from fewshot_transfer.metrics import INFNET_KEYS

#: Columns of each set: row key -> header (the published names).
COLUMNS: dict[str, dict[str, str]] = {"infnet": INFNET_KEYS}
TITLES = {
    "infnet": "Inf-Net evaluation (the COVID-SemiSeg table's metrics)",
}
NOTES = {
    "infnet": (
        "Per test slice at native resolution, the probability map is min-max normalised to [0, 1] and "
        "thresholded (`>=`) at 256 thresholds 1, 254/255, ..., 0; Dice, sensitivity and specificity are 0 on "
        "a slice with no true positive (a lesion-free slice scores 0). meanDic / meanSen / meanSpe = mean over "
        "thresholds of the slice-averaged value, maxDic = the best threshold's, adpDic = Dice at 2 x the map's "
        "mean (capped at 1), MAE = mean |mask - map| (Inf-Net `EvaluationTool`, `Fmeasure_calu.m`). Dice@0.5 = "
        "the leaderboard's Dice (lesion-positive slices only). Means over seeds."
    ),
}


def check_names(names: list[str]) -> list[str]:
    """``names`` deduplicated, each a known set; a clear error otherwise."""
    unknown = sorted(set(names) - set(METRIC_SETS))
    if unknown:
        raise ValueError(f"unknown metric set(s) {unknown}; choose from {list(METRIC_SETS)}")
    return list(dict.fromkeys(names))


def _cell(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _shown(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("applicable", True) and r["n_seeds"]]


def _ordered(rows: list[dict], key: str) -> list[dict]:
    return sorted(rows, key=lambda r: -np.nan_to_num(r.get(key, math.nan), nan=-1.0))


def markdown(rows: list[dict], name: str) -> str | None:
    """The ``name`` set as a Markdown section (one table per k), or None when no row has a value."""
    cols = COLUMNS[name]
    shown = _shown(rows)
    if not any(math.isfinite(r.get(key, math.nan)) for r in shown for key in cols):
        return None
    out = [f"## {TITLES[name]}\n\n{NOTES[name]}\n"]
    header = "| learner | Dice@0.5 | " + " | ".join(cols.values()) + " | n |\n"
    rule = "|---|---:|" + "---:|" * len(cols) + "---:|\n"
    for label, k in dict.fromkeys((r["k_label"], r["k"]) for r in shown):
        out.append(f"\n### {k_title(label, k)}\n\n" + header + rule)
        for r in _ordered([r for r in shown if r["k_label"] == label], next(iter(cols))):
            values = " | ".join(_cell(r.get(key, math.nan)) for key in cols)
            out.append(f"| {r['learner']} | {_cell(r['dice'])} | {values} | {r['n_seeds']} |\n")
    return "".join(out)


def rich_table(rows: list[dict], name: str):
    """The ``name`` set as a terminal table (long format, one row per k and learner)."""
    from rich.table import Table

    cols = COLUMNS[name]
    table = Table(title=TITLES[name], caption="means over seeds; Dice@0.5 = the leaderboard's Dice")
    for col in ("k", "learner", "Dice@0.5", *cols.values(), "n"):
        table.add_column(col, justify="left" if col == "learner" else "right", no_wrap=True)
    shown = _shown(rows)
    labels = list(dict.fromkeys(r["k_label"] for r in shown))
    for i, label in enumerate(labels):
        sub = _ordered([r for r in shown if r["k_label"] == label], next(iter(cols)))
        for j, r in enumerate(sub):
            table.add_row(
                label if j == 0 else "",
                r["learner"],
                _cell(r["dice"]),
                *(_cell(r.get(key, math.nan)) for key in cols),
                str(r["n_seeds"]),
                end_section=j == len(sub) - 1 and i < len(labels) - 1,
            )
    return table
