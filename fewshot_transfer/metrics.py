"""Binary lesion-segmentation metrics, per slice and aggregated over a test set.

Policy for slices with empty ground truth (lesion-free slices), which are common in CT
and where overlap metrics are undefined:

* Per slice, ``dice``, ``iou``, ``sensitivity``, ``precision`` and ``hd95`` are NaN on
  empty-GT slices, and the aggregated means of those five run over lesion-positive slices
  only (``n_positive`` of them).
* Their false positives are still counted: in ``specificity`` (mean over all slices), in
  ``pred_fraction``, in ``dice_global`` (``2·ΣTP / (Σpred + Σgt)`` over every test pixel),
  in ``fp_empty_slices`` (number of empty-GT slices with any predicted lesion pixel) and
  in ``fp_pixels_empty`` (share of all false-positive pixels that lie on empty-GT slices;
  0 when there are no false positives).
* On a lesion-positive slice with an empty prediction: ``dice = iou = sensitivity = 0``,
  ``precision`` is NaN (no predicted pixels; excluded from its mean — the miss is already
  in dice and sensitivity), and ``hd95`` is the image diagonal (in mm when spacing is
  known), so a collapsed model that predicts nothing is penalised rather than hidden.
* ``specificity`` is NaN only on a slice that is lesion everywhere (no negatives).
* ``dice_global`` is NaN when neither prediction nor ground truth has a lesion pixel.
* ``pred_fraction`` / ``true_fraction`` aggregate globally: Σpred / Σpixels, Σgt / Σpixels,
  so the predicted lesion burden sits next to the true one (a collapse shows as ~0).

HD95: surfaces are ``mask XOR binary_erosion(mask)`` (pixels on the image border count as
surface); distances come from ``scipy.ndimage.distance_transform_edt`` with
``sampling=spacing`` (mm, row/col) or in pixels when spacing is None or NaN; the 95th
percentile is taken over the pooled distances of both directions (as MedPy does). In
:func:`evaluate`, HD95 is in mm only when every slice has a finite spacing (see
:func:`hd95_unit`), so one mean never mixes units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

PER_SLICE_KEYS = ("dice", "iou", "sensitivity", "specificity", "precision", "hd95", "pred_fraction", "true_fraction")


def _as_batch(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{what} must be [H, W] or [N, H, W], got shape {a.shape}")
    return a.astype(bool)


def _spacing_rows(spacing: np.ndarray | tuple[float, float] | None, n: int) -> np.ndarray | None:
    """[n, 2] mm spacing, or None when any slice lacks one (then everything is in pixels)."""
    if spacing is None:
        return None
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape == (2,):
        sp = np.broadcast_to(sp, (n, 2))
    if sp.shape != (n, 2):
        raise ValueError(f"spacing must be (2,) or [N={n}, 2] in mm, got shape {sp.shape}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        return None
    return sp


def hd95_unit(spacing: np.ndarray | tuple[float, float] | None, n: int = 1) -> str:
    """``"mm"`` when HD95 for these slices is reported in mm, else ``"px"``."""
    return "px" if _spacing_rows(spacing, n) is None else "mm"


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask)


def _hd95(pred: np.ndarray, gt: np.ndarray, sampling: tuple[float, float] | None) -> float:
    """HD95 of two non-empty 2D masks (pooled symmetric surface distances)."""
    sp, sg = _surface(pred), _surface(gt)
    dist_to_gt = ndimage.distance_transform_edt(~sg, sampling=sampling)
    dist_to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    pooled = np.concatenate([dist_to_gt[sp], dist_to_pred[sg]])
    return float(np.percentile(pooled, 95))


def _diagonal(shape: tuple[int, int], sampling: tuple[float, float] | None) -> float:
    sr, sc = sampling if sampling is not None else (1.0, 1.0)
    return math.hypot(shape[0] * sr, shape[1] * sc)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _per_slice(pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray | None) -> dict[str, np.ndarray]:
    """All per-slice metrics as [N] arrays (overlap terms vectorized, HD95 per slice)."""
    n = pred.shape[0]
    flat_p = pred.reshape(n, -1)
    flat_g = gt.reshape(n, -1)
    npix = flat_p.shape[1]
    tp = (flat_p & flat_g).sum(1).astype(np.float64)
    n_pred = flat_p.sum(1).astype(np.float64)
    n_gt = flat_g.sum(1).astype(np.float64)
    fp, fn = n_pred - tp, n_gt - tp
    tn = npix - tp - fp - fn
    positive = n_gt > 0
    nan = np.full(n, np.nan)
    m = {
        "dice": np.where(positive, _safe_div(2 * tp, 2 * tp + fp + fn), nan),
        "iou": np.where(positive, _safe_div(tp, tp + fp + fn), nan),
        "sensitivity": np.where(positive, _safe_div(tp, n_gt), nan),
        "specificity": _safe_div(tn, tn + fp),
        "precision": np.where(positive, _safe_div(tp, n_pred), nan),
        "pred_fraction": n_pred / npix,
        "true_fraction": n_gt / npix,
    }
    hd = nan.copy()
    shape = pred.shape[1:]
    for i in np.flatnonzero(positive):
        sampling = None if spacing is None else (float(spacing[i, 0]), float(spacing[i, 1]))
        hd[i] = _diagonal(shape, sampling) if n_pred[i] == 0 else _hd95(pred[i], gt[i], sampling)
    m["hd95"] = hd
    m["_tp"], m["_fp"], m["_n_pred"], m["_n_gt"] = tp, fp, n_pred, n_gt
    return m


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def slice_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] | None = None) -> dict[str, float]:
    """Metrics of one ``[H, W]`` slice (policy for empty masks in the module docstring)."""
    p, g = _as_batch(pred, "pred"), _as_batch(gt, "gt")
    if p.shape != g.shape or p.shape[0] != 1:
        raise ValueError(f"slice_metrics needs one [H, W] slice each, got pred {np.shape(pred)} and gt {np.shape(gt)}")
    m = _per_slice(p, g, _spacing_rows(spacing, 1))
    return {k: float(m[k][0]) for k in PER_SLICE_KEYS}


def evaluate(
    pred: np.ndarray | Sequence[np.ndarray], gt: np.ndarray | Sequence[np.ndarray], spacing: np.ndarray | None = None
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Aggregated metrics over a test set and one row of per-slice metrics per slice.

    Counts (``n_slices``, ``n_positive``, ``fp_empty_slices``) are ints, everything else floats.

    ``pred`` and ``gt`` are ``[N, H, W]`` arrays, or sequences of ``N`` ``[H_i, W_i]`` slices
    whose sizes may differ (native-resolution scoring: each slice at its original size; the
    pixel totals of ``dice_global`` and the fractions then run over every slice's own pixels).
    ``spacing`` is ``(2,)`` or ``[N, 2]`` mm (row, col); NaN or None means pixels.
    """
    if not isinstance(pred, np.ndarray) or not isinstance(gt, np.ndarray):
        preds = [_as_batch(x, "pred") for x in pred]
        gts = [_as_batch(x, "gt") for x in gt]
        if len(preds) != len(gts) or any(a.shape != b.shape or a.shape[0] != 1 for a, b in zip(preds, gts)):
            shown = [(a.shape[1:], b.shape[1:]) for a, b in zip(preds, gts) if a.shape != b.shape][:3]
            raise ValueError(
                f"pred ({len(preds)} slices) and gt ({len(gts)} slices) must be pairs of [H, W] slices of "
                f"the same shape, e.g. {shown}"
            )
        if len({a.shape for a in preds}) <= 1 and preds:
            return evaluate(np.concatenate(preds), np.concatenate(gts), spacing)
        n = len(preds)
        sp = _spacing_rows(spacing, n)
        parts = [_per_slice(a, b, None if sp is None else sp[i : i + 1]) for i, (a, b) in enumerate(zip(preds, gts))]
        m = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else {}
        return _aggregate(m, float(sum(a.size for a in preds)), n)
    p, g = _as_batch(pred, "pred"), _as_batch(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same shape")
    n = p.shape[0]
    m = _per_slice(p, g, _spacing_rows(spacing, n))
    return _aggregate(m, float(p.size), n)


def _aggregate(m: dict[str, np.ndarray], total_pix: float, n: int) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Aggregated and per-slice rows from :func:`_per_slice`'s arrays (policy in the module docstring)."""
    if n == 0:
        m = {key: np.zeros(0) for key in (*PER_SLICE_KEYS, "_tp", "_fp", "_n_pred", "_n_gt")}
    positive = m["_n_gt"] > 0
    empty = ~positive
    sum_pred, sum_gt, sum_tp = m["_n_pred"].sum(), m["_n_gt"].sum(), m["_tp"].sum()
    fp_total = m["_fp"].sum()
    agg = {
        "dice": _nanmean(m["dice"]),
        "dice_global": float(2 * sum_tp / (sum_pred + sum_gt)) if sum_pred + sum_gt > 0 else float("nan"),
        "iou": _nanmean(m["iou"]),
        "sensitivity": _nanmean(m["sensitivity"]),
        "specificity": _nanmean(m["specificity"]),
        "precision": _nanmean(m["precision"]),
        "hd95": _nanmean(m["hd95"]),
        "pred_fraction": float(sum_pred / total_pix) if total_pix else float("nan"),
        "true_fraction": float(sum_gt / total_pix) if total_pix else float("nan"),
        "fp_empty_slices": int(np.count_nonzero(empty & (m["_n_pred"] > 0))),
        "fp_pixels_empty": float(m["_fp"][empty].sum() / fp_total) if fp_total > 0 else 0.0,
        "n_slices": int(n),
        "n_positive": int(np.count_nonzero(positive)),
    }
    rows = [{k: float(m[k][i]) for k in PER_SLICE_KEYS} for i in range(n)]
    return agg, rows


# ------------------------------------------------------------------ the Inf-Net metric set

#: The Inf-Net evaluation's 256 thresholds, ``1:-1/255:0`` in its MATLAB ``main.m``.
INFNET_THRESHOLDS = 1.0 - np.arange(256, dtype=np.float64) / 255.0
#: Keys of :func:`infnet_metrics` (stored in a cell's ``metrics``), with the names of the
#: published COVID-SemiSeg table (Inf-Net ``EvaluationTool``).
INFNET_KEYS = {
    "infnet_mean_dice": "meanDic",
    "infnet_max_dice": "maxDic",
    "infnet_adp_dice": "adpDic",
    "infnet_mean_sen": "meanSen",
    "infnet_mean_spe": "meanSpe",
    "infnet_mae": "MAE",
}


def minmax_normalise(proba: np.ndarray) -> np.ndarray:
    """A map rescaled to [0, 1] as MATLAB's ``mapminmax(x, 0, 1)`` does: a constant map is left as it is."""
    p = np.asarray(proba, dtype=np.float64)
    lo, hi = float(p.min()), float(p.max())
    return (p - lo) / (hi - lo) if hi > lo else p.copy()


def _infnet_counts(pmap: np.ndarray, gt: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(TP, predicted, gt, pixels) of ``pmap >= t`` for every ``t``, by sorting once instead of 256 passes."""
    values = np.sort(pmap.ravel())
    positive = np.sort(pmap[gt])
    n_pred = values.size - np.searchsorted(values, thresholds, side="left")
    tp = positive.size - np.searchsorted(positive, thresholds, side="left")
    return tp.astype(np.float64), n_pred.astype(np.float64), float(positive.size), float(values.size)


def _infnet_rates(tp: np.ndarray, n_pred: np.ndarray, n_gt: float, npix: float) -> tuple[np.ndarray, ...]:
    """Dice, sensitivity and specificity as the Inf-Net ``Fmeasure_calu.m`` defines them: all 0 without a TP.

    With a TP, specificity is ``TN / (TN + FP)``, NaN (MATLAB's 0/0) on an image that is lesion everywhere.
    """
    hit = tp > 0
    fp = n_pred - tp
    tn = npix - n_pred - (n_gt - tp)
    dice, sen = np.zeros_like(tp), np.zeros_like(tp)
    np.divide(2 * tp, n_gt + n_pred, out=dice, where=hit)
    np.divide(tp, n_gt, out=sen, where=hit)
    spe = np.where(hit & (tn + fp == 0), np.nan, 0.0)
    np.divide(tn, tn + fp, out=spe, where=hit & (tn + fp > 0))
    return dice, sen, spe


def infnet_metrics(proba: Sequence[np.ndarray], gt: Sequence[np.ndarray]) -> dict[str, float]:
    """The COVID-SemiSeg table's metric set (Inf-Net ``EvaluationTool/main.m`` + ``Fmeasure_calu.m``).

    Per image: the probability map is min-max normalised to [0, 1]; at each of the 256
    thresholds ``t`` = 1, 254/255, ..., 0 the mask is ``map >= t``; Dice, sensitivity and
    specificity are 0 when the mask has no true positive (also on a lesion-free image: it
    scores 0 at every threshold); MAE = mean |gt - map|. Over images: each rate is averaged
    over images at each threshold, then ``mean*`` averages over thresholds and ``max_dice``
    takes the best threshold. ``adp_dice`` thresholds each map at ``2 x`` its mean (capped at
    1) and averages Dice over images. Maps may have different sizes (native resolution).
    """
    if len(proba) != len(gt) or not len(proba):
        raise ValueError(
            f"infnet_metrics needs the same non-zero number of maps and masks, got {len(proba)} and {len(gt)}"
        )
    dice, sen, spe, adp, mae = [], [], [], [], []
    for p, g in zip(proba, gt):
        g = np.asarray(g).astype(bool)
        if np.shape(p) != g.shape or g.ndim != 2:
            raise ValueError(
                f"each map and mask must be one [H, W] pair of the same shape, got {np.shape(p)} and {g.shape}"
            )
        m = minmax_normalise(p)
        thr = np.array([min(2.0 * float(m.mean()), 1.0)])
        tp, n_pred, n_gt, npix = _infnet_counts(m, g, np.concatenate([INFNET_THRESHOLDS, thr]))
        d, s, sp = _infnet_rates(tp, n_pred, n_gt, npix)
        dice.append(d[:-1])
        sen.append(s[:-1])
        spe.append(sp[:-1])
        adp.append(d[-1])
        mae.append(float(np.abs(g - m).mean()))
    column_dice = np.mean(dice, axis=0)
    return {
        "infnet_mean_dice": float(column_dice.mean()),
        "infnet_max_dice": float(column_dice.max()),
        "infnet_adp_dice": float(np.mean(adp)),
        "infnet_mean_sen": float(np.mean(sen, axis=0).mean()),
        "infnet_mean_spe": float(np.mean(spe, axis=0).mean()),
        "infnet_mae": float(np.mean(mae)),
    }
