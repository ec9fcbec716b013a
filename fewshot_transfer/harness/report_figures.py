"""The HTML report's figures that ``plots.py`` does not already draw, as PNG bytes.

Paired seeds, per-slice Dice distributions and the forest plot of mechanism gains. Each
function takes leaderboard rows and cell records and returns the encoded PNG, so the page
embeds it and nothing touches the run directory.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from fewshot_transfer.harness.leaderboard import gain_reference
from fewshot_transfer.harness.plots import _palette, _pyplot


def png(fig) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _k_columns(rows: list[dict]) -> list[tuple[str, int]]:
    return list(dict.fromkeys((r["k_label"], r["k"]) for r in rows if r.get("applicable", True)))


def _dice_by_seed(records: list[dict], learner: str, label: str) -> dict[int, float]:
    """Per-seed Dice of a learner's ok cells at one k (k-independent cells count at every k)."""
    return {
        int(r["seed"]): float(r["metrics"]["dice"])
        for r in records
        if r["learner"] == learner and r["status"] == "ok" and r["k_label"] in (label, "any")
    }


def paired_seeds(rows: list[dict], records: list[dict]) -> bytes | None:
    """Per k, each learner's per-seed Dice beside its reference's, joined seed to seed: the
    pairs the gain's paired t-interval is computed from."""
    ks = _k_columns(rows)
    if not ks:
        return None
    plt = _pyplot()
    learners = list(dict.fromkeys(r["learner"] for r in rows))
    fig, axes = plt.subplots(len(ks), 1, figsize=(max(6.0, 1.1 * len(learners)), 3.0 * len(ks)), squeeze=False)
    colors = dict(zip(learners, _palette(len(learners))))
    for ax, (label, k) in zip(axes[:, 0], ks):
        ref = gain_reference(k)
        ref_dice = _dice_by_seed(records, ref, label)
        shown = [r["learner"] for r in rows if r["k_label"] == label and r.get("applicable", True)]
        shown = [n for n in shown if n != ref]
        for i, name in enumerate(shown):
            own = _dice_by_seed(records, name, label)
            for seed, d in own.items():
                if seed in ref_dice:
                    ax.plot([i - 0.18, i + 0.18], [ref_dice[seed], d], color="0.6", lw=0.8, zorder=1)
            ax.scatter([i - 0.18] * len(ref_dice), list(ref_dice.values()), s=14, color="0.35", zorder=2)
            ax.scatter([i + 0.18] * len(own), list(own.values()), s=18, color=colors[name], zorder=3)
        ax.set_xticks(range(len(shown)), [f"{ref} | {n}" for n in shown], fontsize=7, rotation=20, ha="right")
        ax.set_ylabel("Dice per seed")
        ax.set_title(f"k = {label}: each learner (right, colour) vs {ref} (left, grey), same seed joined", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return png(fig)


def per_slice_dice(rows: list[dict], records: list[dict]) -> bytes | None:
    """Per k, the distribution of per-slice Dice (lesion-positive test slices, all seeds pooled)."""
    ks = _k_columns(rows)
    plt = _pyplot()
    panels = []
    for label, _ in ks:
        data: dict[str, list[float]] = defaultdict(list)
        for name in dict.fromkeys(r["learner"] for r in rows if r["k_label"] == label and r.get("applicable", True)):
            for r in records:
                if r["learner"] == name and r["status"] == "ok" and r["k_label"] in (label, "any"):
                    values = r.get("per_slice", {}).get("dice", [])
                    data[name].extend(float(v) for v in values if v is not None and math.isfinite(float(v)))
        data = {n: v for n, v in data.items() if v}
        if data:
            panels.append((label, data))
    if not panels:
        return None
    width = max(6.0, 0.9 * max(len(d) for _, d in panels))
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 2.8 * len(panels)), squeeze=False)
    for ax, (label, data) in zip(axes[:, 0], panels):
        ax.boxplot(list(data.values()), showmeans=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(data) + 1), list(data), fontsize=7, rotation=20, ha="right")
        ax.set_ylabel("Dice per slice")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"k = {label}: lesion-positive test slices, seeds pooled (triangle = mean)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return png(fig)


def mechanism_forest(rows: list[dict]) -> bytes | None:
    """Forest plot: learner − its own control per k, 95% CI, Holm-corrected p beside each line."""
    tested = [r for r in rows if not math.isnan(r.get("mech", math.nan))]
    if not tested:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(tested) + 1.2))
    for y, r in enumerate(reversed(tested)):
        lo = r["mech"] - r["mech_lo"] if not math.isnan(r["mech_lo"]) else 0.0
        hi = r["mech_hi"] - r["mech"] if not math.isnan(r["mech_hi"]) else 0.0
        significant = not math.isnan(r["mech_lo"]) and (r["mech_lo"] > 0 or r["mech_hi"] < 0)
        color = ("tab:green" if r["mech"] > 0 else "tab:red") if significant else "0.3"
        ax.errorbar([r["mech"]], [y], xerr=[[lo], [hi]], fmt="o", color=color, capsize=3)
        holm = r.get("mech_p_holm", math.nan)
        ax.annotate(
            "Holm p " + ("n/a" if math.isnan(holm) else format(holm, ".3g")),
            (1.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="center",
        )
    ax.axvline(0, color="black", lw=0.8, ls="--")
    ax.set_yticks(range(len(tested)), [f"{r['learner']} − {r['control']} (k={r['k_label']})" for r in reversed(tested)])
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("mechanism gain in Dice (learner − own control, paired by seed, 95% CI)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return png(fig)


def rendered(plot: Callable[..., Path], *args, **kwargs) -> bytes:
    """The PNG bytes of one of ``plots.py``'s figures (they write a file; this one is temporary)."""
    with tempfile.TemporaryDirectory() as tmp:
        return Path(plot(*args, path=Path(tmp) / "figure.png", **kwargs)).read_bytes()
