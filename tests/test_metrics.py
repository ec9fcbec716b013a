"""Segmentation metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fewshot_transfer.metrics import (
    INFNET_THRESHOLDS,
    evaluate,
    hd95_unit,
    infnet_metrics,
    minmax_normalise,
    slice_metrics,
)


def square(hw: int, top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros((hw, hw), dtype=np.uint8)
    m[top : top + size, left : left + size] = 1
    return m


def test_perfect_prediction() -> None:
    gt = square(32, 5, 5, 10)
    m = slice_metrics(gt, gt)
    assert m["dice"] == m["iou"] == m["sensitivity"] == m["specificity"] == m["precision"] == 1.0
    assert m["hd95"] == 0.0
    assert m["pred_fraction"] == m["true_fraction"] == 100 / 1024


def test_disjoint_squares() -> None:
    gt, pred = square(32, 0, 0, 4), square(32, 20, 20, 4)
    m = slice_metrics(pred, gt)
    assert m["dice"] == m["iou"] == m["sensitivity"] == m["precision"] == 0.0
    assert m["specificity"] == pytest.approx((1024 - 32) / (1024 - 16))


def test_partial_overlap_counts() -> None:
    gt, pred = square(20, 0, 0, 4), square(20, 0, 2, 4)  # overlap 4x2 = 8 px
    m = slice_metrics(pred, gt)
    assert m["dice"] == pytest.approx(2 * 8 / 32)
    assert m["iou"] == pytest.approx(8 / 24)
    assert m["sensitivity"] == m["precision"] == pytest.approx(0.5)


@pytest.mark.parametrize("d", [1, 3, 6])
def test_hd95_offset_squares_pixels_and_mm(d: int) -> None:
    gt, pred = square(64, 10, 10, 20), square(64, 10 + d, 10, 20)
    assert slice_metrics(pred, gt)["hd95"] == pytest.approx(d)
    assert slice_metrics(pred, gt, spacing=(2.0, 1.0))["hd95"] == pytest.approx(2 * d)
    assert slice_metrics(pred, gt, spacing=(float("nan"), 1.0))["hd95"] == pytest.approx(d)


def test_hd95_line_segments_exact() -> None:
    gt = np.zeros((30, 30), np.uint8)
    pred = np.zeros((30, 30), np.uint8)
    gt[5, 3:25] = 1
    pred[12, 3:25] = 1
    assert slice_metrics(pred, gt)["hd95"] == pytest.approx(7)
    assert slice_metrics(pred, gt, spacing=(0.5, 3.0))["hd95"] == pytest.approx(3.5)


def test_empty_gt_and_empty_pred() -> None:
    z = np.zeros((16, 16), np.uint8)
    m = slice_metrics(z, z)
    for k in ("dice", "iou", "sensitivity", "precision", "hd95"):
        assert math.isnan(m[k])
    assert m["specificity"] == 1.0 and m["pred_fraction"] == 0.0
    agg, rows = evaluate(np.stack([z, z]), np.stack([z, z]))
    assert agg["n_positive"] == 0 and agg["fp_empty_slices"] == 0
    assert math.isnan(agg["dice"]) and math.isnan(agg["dice_global"])


def test_empty_gt_false_positive_excluded_from_dice_mean_but_counted() -> None:
    gt = np.stack([square(16, 2, 2, 4), np.zeros((16, 16), np.uint8)])
    pred = np.stack([square(16, 2, 2, 4), square(16, 8, 8, 2)])
    agg, rows = evaluate(pred, gt)
    assert agg["dice"] == 1.0  # the empty-GT slice is not in the mean
    assert math.isnan(rows[1]["dice"])
    assert agg["fp_empty_slices"] == 1
    assert agg["fp_pixels_empty"] == 1.0
    assert agg["dice_global"] == pytest.approx(2 * 16 / (20 + 16))
    assert rows[1]["specificity"] == pytest.approx(252 / 256)
    assert agg["specificity"] == pytest.approx((1.0 + 252 / 256) / 2)
    assert agg["pred_fraction"] == pytest.approx(20 / 512)
    assert agg["true_fraction"] == pytest.approx(16 / 512)
    assert agg["n_slices"] == 2 and agg["n_positive"] == 1


def test_empty_prediction_on_lesion_slice_is_penalised() -> None:
    gt = square(30, 5, 5, 6)
    m = slice_metrics(np.zeros_like(gt), gt)
    assert m["dice"] == 0.0 and m["sensitivity"] == 0.0
    assert math.isnan(m["precision"])
    assert m["hd95"] == pytest.approx(math.hypot(30, 30))
    assert slice_metrics(np.zeros_like(gt), gt, spacing=(2.0, 1.0))["hd95"] == pytest.approx(math.hypot(60, 30))
    agg, _ = evaluate(np.stack([np.zeros_like(gt), gt]), np.stack([gt, gt]))
    assert agg["hd95"] == pytest.approx(math.hypot(30, 30) / 2)
    assert agg["precision"] == 1.0 and agg["dice"] == 0.5


def test_evaluate_matches_slice_metrics_and_spacing_units() -> None:
    rng = np.random.default_rng(0)
    pred = (rng.random((5, 24, 24)) > 0.7).astype(np.uint8)
    gt = (rng.random((5, 24, 24)) > 0.7).astype(np.uint8)
    spacing = np.array([[1.0, 1.0], [2.0, 1.0], [0.5, 0.5], [1.0, 3.0], [1.0, 1.0]])
    _, rows = evaluate(pred, gt, spacing)
    for i in range(5):
        single = slice_metrics(pred[i], gt[i], tuple(spacing[i]))
        assert rows[i] == pytest.approx(single, nan_ok=True)
    assert hd95_unit(spacing, 5) == "mm"
    spacing[2, 0] = np.nan
    assert hd95_unit(spacing, 5) == "px"
    _, rows_px = evaluate(pred, gt, spacing)
    assert rows_px[1]["hd95"] == pytest.approx(slice_metrics(pred[1], gt[1])["hd95"])


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        evaluate(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        evaluate(np.zeros(4), np.zeros(4))


# ------------------------------------------------------------------ the Inf-Net metric set


def _infnet_by_hand(proba, gt):
    """Inf-Net's main.m + Fmeasure_calu.m transcribed loop for loop (256 thresholds, >=, 0 without a TP)."""

    def rates(m, g, t):
        label = m >= min(t, 1.0)
        tp = np.sum(label & g)
        if tp == 0:
            return 0.0, 0.0, 0.0
        fp, fn = np.sum(label) - tp, np.sum(g) - tp
        tn = np.sum(~label) - fn
        return 2 * tp / (np.sum(g) + np.sum(label)), tp / np.sum(g), tn / (tn + fp)

    table = np.array(
        [[rates(minmax_normalise(p), g.astype(bool), t) for t in INFNET_THRESHOLDS] for p, g in zip(proba, gt)]
    )
    col = table.mean(axis=0)
    adp = [rates(minmax_normalise(p), g.astype(bool), 2 * minmax_normalise(p).mean())[0] for p, g in zip(proba, gt)]
    mae = [np.abs(g - minmax_normalise(p)).mean() for p, g in zip(proba, gt)]
    return {
        "infnet_mean_dice": col[:, 0].mean(),
        "infnet_max_dice": col[:, 0].max(),
        "infnet_adp_dice": np.mean(adp),
        "infnet_mean_sen": col[:, 1].mean(),
        "infnet_mean_spe": col[:, 2].mean(),
        "infnet_mae": np.mean(mae),
    }


def test_infnet_fixture_by_hand():
    """A 2x2 map worked out on paper: normalised [[0, .5], [1, 0]] against lesion pixels (0, 1) and (1, 0).

    t = 1 .. 128/255 (128 thresholds): mask {1} -> Dice 2/3, Sen 1/2, Spe 1; t = 127/255 .. 1/255
    (127): mask {.5, 1} -> 1, 1, 1; t = 0: every pixel -> Dice 2/3, Sen 1, Spe 0. Adaptive threshold
    2 x 0.375 = 0.75 -> mask {1} -> 2/3. MAE = 0.5 / 4.
    """
    assert INFNET_THRESHOLDS.size == 256 and INFNET_THRESHOLDS[0] == 1.0 and INFNET_THRESHOLDS[-1] == 0.0
    proba = np.array([[0.2, 0.6], [1.0, 0.2]])
    gt = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    got = infnet_metrics([proba], [gt])
    assert got["infnet_mean_dice"] == pytest.approx((129 * 2 / 3 + 127) / 256)
    assert got["infnet_max_dice"] == pytest.approx(1.0)
    assert got["infnet_adp_dice"] == pytest.approx(2 / 3)
    assert got["infnet_mean_sen"] == pytest.approx((128 * 0.5 + 128) / 256)
    assert got["infnet_mean_spe"] == pytest.approx(255 / 256)
    assert got["infnet_mae"] == pytest.approx(0.125)


def test_infnet_lesion_free_image_scores_zero_and_is_averaged_in():
    """An image without lesion has no TP at any threshold: Dice, Sen, Spe 0, pulling the image mean down."""
    proba = [np.array([[0.2, 0.6], [1.0, 0.2]]), np.array([[0.1, 0.3], [0.3, 0.1]])]
    gt = [np.array([[0, 1], [1, 0]]), np.zeros((2, 2), dtype=np.uint8)]
    got = infnet_metrics(proba, gt)
    assert got["infnet_mean_dice"] == pytest.approx((129 * 2 / 3 + 127) / 512)
    assert got["infnet_max_dice"] == pytest.approx(0.5)
    assert got["infnet_adp_dice"] == pytest.approx(1 / 3)
    assert got["infnet_mean_sen"] == pytest.approx(0.375)
    assert got["infnet_mean_spe"] == pytest.approx(255 / 512)
    assert got["infnet_mae"] == pytest.approx((0.125 + 0.5) / 2)


def test_infnet_threshold_is_inclusive():
    """``map >= t`` (Fmeasure_calu.m), not ``>``: at t = 1 the map's maximum is already predicted."""
    got = infnet_metrics([np.array([[0.0, 1.0]])], [np.array([[0, 1]])])
    # t = 1/255 .. 1: exactly the lesion pixel (Dice 1); t = 0: both pixels (2/3). With '>' the t = 1
    # column would score 0 instead of 1.
    assert got["infnet_mean_dice"] == pytest.approx((255 + 2 / 3) / 256)


def test_infnet_constant_map_is_left_as_mapminmax_leaves_it():
    flat = np.full((2, 2), 0.3)
    assert np.array_equal(minmax_normalise(flat), flat)
    got = infnet_metrics([flat], [np.array([[1, 0], [0, 0]])])
    # 0.3 >= t for the 77 thresholds t <= 76/255 (~0.298) and t = 0 ... every pixel: Dice 2/5.
    n_on = int(np.sum(1.0 - np.arange(256) / 255.0 <= 0.3))
    assert got["infnet_mean_dice"] == pytest.approx(n_on * 0.4 / 256)
    assert got["infnet_mae"] == pytest.approx((0.7 + 3 * 0.3) / 4)


def test_infnet_matches_the_loop_transcription_on_random_maps_of_several_sizes():
    rng = np.random.default_rng(0)
    shapes = [(17, 23), (30, 30), (9, 40), (12, 12)]
    proba = [rng.random(s) ** 3 for s in shapes]
    gt = [(rng.random(s) < 0.2).astype(np.uint8) for s in shapes]
    gt[3][:] = 0
    proba[2] = np.round(proba[2] * 255) / 255  # an 8-bit map: values fall exactly on thresholds
    got = infnet_metrics(proba, gt)
    want = _infnet_by_hand(proba, gt)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_infnet_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same shape"):
        infnet_metrics([np.zeros((2, 2))], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="same non-zero number"):
        infnet_metrics([], [])
