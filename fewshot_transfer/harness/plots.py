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
from fewshot_transfer.harness.leaderboard import BASELINE


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    return path


def transfer_gain_plot(rows: list[dict], path: Path) -> Path:
    """Gain over scratch vs labeled fraction: one line per learner, 95% CI bands, log-x."""
    plt = _pyplot()
    fig, (ax_gain, ax_dice) = plt.subplots(1, 2, figsize=(12, 4.5))
    learners_ = [n for n in dict.fromkeys(r["learner"] for r in rows)]
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(learners_):
        sub = sorted((r for r in rows if r["learner"] == name and not math.isnan(r["labeled_fraction"])), key=lambda r: r["k"])
        if not sub:
            continue
        x = np.array([r["labeled_fraction"] for r in sub])
        color = cmap(i % 10)
        dice = np.array([r["dice"] for r in sub])
        ax_dice.plot(x, dice, "o-", color=color, label=name)
        ax_dice.fill_between(x, [r["dice_lo"] for r in sub], [r["dice_hi"] for r in sub], color=color, alpha=0.15)
        if name == BASELINE:
            continue
        gain = np.array([r["gain"] for r in sub])
        if not np.isfinite(gain).any():  # no paired scratch cells in this run: nothing to draw
            continue
        ax_gain.plot(x, gain, "o-", color=color, label=name)
        ax_gain.fill_between(x, [r["gain_lo"] for r in sub], [r["gain_hi"] for r in sub], color=color, alpha=0.15)
        for r in sub:
            if r["collapsed"]:
                ax_gain.plot([r["labeled_fraction"]], [r["gain"]], "x", color="red", ms=10)
    ax_gain.axhline(0, color="black", lw=1)
    for ax in (ax_gain, ax_dice):
        ax.set_xscale("log")
        ax.set_xlabel("labeled fraction of the support pool (k / pool size, log)")
        ax.grid(alpha=0.3, which="both")
        ks = sorted({(r["labeled_fraction"], r["k_label"]) for r in rows if not math.isnan(r["labeled_fraction"])})
        sec = ax.secondary_xaxis("top")
        sec.set_xticks([f for f, _ in ks], [f"k={lab}" for _, lab in ks])
    ax_gain.set_ylabel("Dice gain over scratch (paired, 95% CI)")
    ax_gain.set_title("Transfer gain vs labeled fraction (x = collapsed)")
    ax_dice.set_ylabel("Dice (mean over seeds, 95% CI)")
    ax_dice.set_title("Dice vs labeled fraction")
    ax_dice.legend(fontsize=8, loc="lower right")
    if ax_gain.get_legend_handles_labels()[0]:
        ax_gain.legend(fontsize=8, loc="upper right")
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
        fig.suptitle(title + "  (red = predicted / labeled lesion, cyan = ground-truth outline)", fontsize=8)
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
