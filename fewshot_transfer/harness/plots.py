"""Figures people would rather look at than read: the transfer-gain curve, prediction galleries, loss curves.

matplotlib is imported inside each function with the Agg backend, so importing the
harness never needs a display; every PNG is written to a temp file and renamed.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fewshot_transfer.atomic import atomic_open
from fewshot_transfer.families import FAMILIES
from fewshot_transfer.harness.leaderboard import BASELINE
from fewshot_transfer.harness.selection import is_oracle


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    return path


#: Drawn in every panel so each family is read against the same two bars.
REFERENCES = {BASELINE: ("black", "--"), "finetune": ("dimgray", ":")}


def _palette(n: int) -> list:
    """``n`` distinct colours that are neither grey nor black (the references' colours)."""
    import matplotlib

    base = list(matplotlib.colormaps["tab10"].colors)
    colors = [c for i, c in enumerate(base) if i != 7]
    if n > len(colors):
        colors = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (14, 15)]
    if n > len(colors):
        colors = [matplotlib.colormaps["hsv"](i / n) for i in range(n)]
    return colors[:n]


def transfer_gain_plot(rows: list[dict], path: Path) -> Path:
    """Gain and Dice vs k, one panel per learner family, finetune and scratch in every panel.

    x = the k columns (labeled with their fraction of the support pool), evenly spaced so
    k = 0 fits next to the others. The k = 0 gain is against source-only, not scratch, so
    it is drawn as an open marker not joined to the line. Bands = 95% CI over seeds;
    red x = collapsed. Within a panel no two learners share a colour.
    """
    plt = _pyplot()
    live = [r for r in rows if r.get("applicable", True) and not math.isnan(r["dice"])]
    ks = sorted({(r["k"], r["k_label"], r["labeled_fraction"]) for r in live})
    xpos = {label: i for i, (_, label, _) in enumerate(ks)}
    present = list(dict.fromkeys(r.get("family") or "other" for r in live))
    families = [f for f in FAMILIES if f in present] + [f for f in present if f not in FAMILIES]
    families = families or ["baseline"]
    fig, axes = plt.subplots(2, len(families), figsize=(5.2 * len(families), 8), squeeze=False, sharey="row")

    def series(name: str):
        sub = sorted((r for r in live if r["learner"] == name), key=lambda r: r["k"])
        return sub, np.array([xpos[r["k_label"]] for r in sub], dtype=float)

    def draw(ax_gain, ax_dice, name: str, color, style: str, label: str) -> None:
        sub, x = series(name)
        if not sub:
            return
        ax_dice.plot(x, [r["dice"] for r in sub], marker="o", ls=style, color=color, label=label)
        ax_dice.fill_between(x, [r["dice_lo"] for r in sub], [r["dice_hi"] for r in sub], color=color, alpha=0.12)
        shots = [(xi, r) for xi, r in zip(x, sub) if r["k"] > 0 and not math.isnan(r["gain"])]
        if shots:
            xs = [xi for xi, _ in shots]
            ax_gain.plot(xs, [r["gain"] for _, r in shots], marker="o", ls=style, color=color, label=label)
            ax_gain.fill_between(
                xs, [r["gain_lo"] for _, r in shots], [r["gain_hi"] for _, r in shots], color=color, alpha=0.12
            )
        for xi, r in zip(x, sub):
            if r["k"] == 0 and not math.isnan(r["gain"]):
                ax_gain.errorbar(
                    [xi],
                    [r["gain"]],
                    yerr=[[r["gain"] - r["gain_lo"]], [r["gain_hi"] - r["gain"]]]
                    if not math.isnan(r["gain_lo"])
                    else None,
                    fmt="o",
                    mfc="white",
                    color=color,
                )
            if r["collapsed"]:
                ax_gain.plot([xi], [0 if math.isnan(r["gain"]) else r["gain"]], "x", color="red", ms=10)

    for col, fam in enumerate(families):
        ax_gain, ax_dice = axes[0, col], axes[1, col]
        members = [
            n
            for n in dict.fromkeys(r["learner"] for r in live if (r.get("family") or "other") == fam)
            if n not in REFERENCES
        ]
        for name, (color, style) in REFERENCES.items():
            draw(ax_gain, ax_dice, name, color, style, f"{name} (reference)")
        for name, color in zip(members, _palette(len(members))):
            draw(ax_gain, ax_dice, name, color, "-", name)
        ax_gain.axhline(0, color="black", lw=0.8, ls="--", label=f"{BASELINE} (reference, gain 0)")
        ax_gain.set_title(f"{fam}: gain over scratch (k = 0: over source-only)", fontsize=9)
        ax_dice.set_title(f"{fam}: Dice", fontsize=9)
        for ax in (ax_gain, ax_dice):
            ax.set_xticks(range(len(ks)), [f"k={lab}\n{frac:.1%}" for _, lab, frac in ks])
            ax.set_xlabel("k (labeled fraction of the support pool)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="best")
    axes[0, 0].set_ylabel("Dice gain (paired by seed, 95% CI)")
    axes[1, 0].set_ylabel("Dice (mean over seeds, 95% CI)")
    oracle = any(is_oracle(str(r.get("selection_rule", ""))) for r in rows)
    fig.suptitle(
        "Transfer gain and Dice per learner family (red x = collapsed; open marker = k = 0, vs source-only)"
        + (
            "\nORACLE: some hyperparameters were selected on the TEST SET (an upper bound, not a result)"
            if oracle
            else ""
        ),
        fontsize=10,
    )
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def prediction_gallery(
    images: np.ndarray, truth: np.ndarray, predictions: dict[str, np.ndarray], path: Path, title: str = ""
) -> Path:
    """Rows = test slices; columns = image, ground truth, each learner's prediction (lung window)."""
    plt = _pyplot()
    n, cols = len(images), 2 + len(predictions)
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.7 * n), squeeze=False)
    for i in range(n):
        panels = [("image", None), ("ground truth", truth[i])] + [(name, p[i]) for name, p in predictions.items()]
        for j, (name, mask) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
            if mask is not None and mask.any():
                overlay = np.ma.masked_where(mask == 0, mask)
                ax.imshow(overlay, cmap="autumn", alpha=0.55, vmin=0, vmax=1)
            if j > 1 and truth[i].any():
                ax.contour(truth[i], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
    if title:
        fig.suptitle(title + "  (yellow = predicted / labeled lesion, cyan = ground-truth outline)", fontsize=8)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def loss_curves_plot(csv_path: Path, path: Path) -> Path:
    """All loss columns of one cell's curves CSV against step, one panel per phase."""
    plt = _pyplot()
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    phases = list(dict.fromkeys(r["phase"] for r in rows))
    fig, axes = plt.subplots(1, len(phases), figsize=(4.5 * len(phases), 3.2), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        sub = [r for r in rows if r["phase"] == phase]
        steps = [int(r["step"]) for r in sub]
        for col in sub[0]:
            if col in ("phase", "step"):
                continue
            vals = [float(r[col]) if r.get(col) not in (None, "") else np.nan for r in sub]
            if not np.all(np.isnan(vals)):
                ax.plot(steps, vals, label=col)
        ax.set_title(phase)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(Path(csv_path).name.replace(".curves.csv", ""), fontsize=9)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
