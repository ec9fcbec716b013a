"""A contact sheet of slices, to see what a dataset (phantom or real) actually looks like.

Numbers about lesion fractions do not show a wrong window, a flipped mask or a lesion
drawn outside the lung; one look at a grid does. Matplotlib is imported inside the
function (and without pyplot), so importing the data layer stays cheap and headless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewshot_transfer.atomic import atomic_open
from fewshot_transfer.data.slices import SliceSet

#: Share of tiles per block that show lesion-positive slices (when there are enough).
POSITIVE_SHARE = 0.75


def pick_rows(ss: SliceSet, n: int, rng: np.random.Generator) -> np.ndarray:
    """About 3/4 lesion-positive then 1/4 lesion-free rows, each group spread over patients."""
    frac = ss.lesion_fraction()
    pos = np.flatnonzero(frac > 0)
    neg = np.flatnonzero(frac == 0)
    n = min(n, len(ss))
    n_pos = min(pos.size, max(n - neg.size, int(round(POSITIVE_SHARE * n))))
    chosen = np.concatenate([_spread(ss, pos, n_pos, rng), _spread(ss, neg, n - n_pos, rng)])
    return chosen.astype(np.int64)


def _spread(ss: SliceSet, rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of ``rows``, taking patients in turn so one patient does not fill the block."""
    if n <= 0 or rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    rows = rng.permutation(rows)
    rank = np.zeros(rows.size, dtype=np.int64)
    for p in np.unique(ss.patients[rows]):
        mine = np.flatnonzero(ss.patients[rows] == p)
        rank[mine] = np.arange(mine.size)
    order = np.lexsort((rng.random(rows.size), rank))
    return rows[order[:n]]


def _draw_tile(ax, ss: SliceSet, row: int) -> None:
    """Grey lung window, red lesion fill + contour, thin cyan lung contour."""
    img = ss.images[row]
    mask = ss.masks[row] > 0
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if ss.lungs is not None and ss.lungs[row].any():
        ax.contour(ss.lungs[row], levels=[0.5], colors="#39c5e6", linewidths=0.5)
    if mask.any():
        overlay = np.zeros((*mask.shape, 4), dtype=np.float32)
        overlay[mask] = (1.0, 0.1, 0.1, 0.35)
        ax.imshow(overlay, interpolation="nearest")
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="#ff3030", linewidths=0.7)
    frac = 100.0 * float(mask.mean())
    ax.set_title(f"{ss.patients[row]} z{int(ss.slice_index[row])}  {frac:.1f}%", fontsize=6, color="white", pad=2)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def preview_grid(
    slicesets: list[SliceSet] | SliceSet, out_png: str | Path, *, n_per_domain: int = 8, seed: int = 0
) -> Path:
    """Write a PNG grid with one row block per SliceSet; returns the path written.

    Each block shows ``n_per_domain`` slices (mostly lesion-positive, some lesion-free)
    in the lung window the images already carry ([0, 1] = HU [-1250, 250]). The file is
    written to a temporary name in the same folder and renamed, so a reader never sees
    a half-written PNG.
    """
    from matplotlib.figure import Figure

    sets = [slicesets] if isinstance(slicesets, SliceSet) else list(slicesets)
    if not sets:
        raise ValueError("preview_grid needs at least one SliceSet")
    if n_per_domain < 1:
        raise ValueError(f"n_per_domain must be >= 1, got {n_per_domain}")
    cols = min(n_per_domain, 8)
    rows_per_block = -(-n_per_domain // cols)
    rng = np.random.default_rng(seed)
    picks = [pick_rows(ss, n_per_domain, rng) for ss in sets]

    n_rows = rows_per_block * len(sets)
    fig = Figure(figsize=(1.6 * cols + 0.5, 1.7 * n_rows + 0.2), facecolor="black")
    grid = fig.add_gridspec(n_rows, cols, left=0.06, right=0.995, top=0.97, bottom=0.01, wspace=0.04, hspace=0.18)
    for b, (ss, chosen) in enumerate(zip(sets, picks)):
        for i in range(rows_per_block * cols):
            ax = fig.add_subplot(grid[b * rows_per_block + i // cols, i % cols])
            ax.set_facecolor("black")
            if i < chosen.size:
                _draw_tile(ax, ss, int(chosen[i]))
            else:
                ax.axis("off")
        top = 1.0 - (b * rows_per_block + rows_per_block / 2) / n_rows
        fig.text(
            0.012,
            0.01 + 0.96 * top,
            f"{ss.name}\n({len(ss)} slices)",
            rotation=90,
            va="center",
            ha="left",
            color="white",
            fontsize=8,
        )

    out = Path(out_png)
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, facecolor=fig.get_facecolor())
    return out
