"""Segmentation metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fewshot_transfer.metrics import evaluate, hd95_unit, slice_metrics


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
