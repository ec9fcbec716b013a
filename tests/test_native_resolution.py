"""Native-resolution scoring and the real-data split rules, on generated slice folders.

A slice stored at 100 x 80 is trained on at ``data.size`` but scored at 100 x 80 against
its own stored mask; a slice already at ``data.size`` (every phantom slice) is scored
exactly as before. Fixtures are written here (never read from ../shared).
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from fewshot_transfer.config import resolve_config
from fewshot_transfer.data.loader import load_dataset, native_slices
from fewshot_transfer.data.slices import SliceSet
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.harness.leaderboard import header_meta
from fewshot_transfer.harness.runner import score
from fewshot_transfer.metrics import INFNET_KEYS, evaluate, infnet_metrics
from fewshot_transfer.training.segmenter import resample_proba, resample_to

from fixtures_datasets import build_semiseg, write_manifest, write_png, write_spec

SIZE = 32


class Oracle:
    """A segmenter that predicts the model-size ground truth (a perfect model at ``data.size``)."""

    threshold = 0.5

    def __init__(self, data: SliceSet) -> None:
        self.data = data

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        assert images.shape == self.data.images.shape
        return self.data.masks.astype(np.float32)


def half_mask(h: int, w: int) -> np.ndarray:
    """Left half of the slice is lesion: survives 100x80 -> 32x32 -> 100x80 exactly."""
    m = np.zeros((h, w), np.uint8)
    m[:, : w // 2] = 1
    return m


def diagonal_mask(h: int, w: int) -> np.ndarray:
    """A one-pixel diagonal line: lost in detail by the round trip through 32x32."""
    m = np.zeros((h, w), np.uint8)
    for i in range(min(h, w)):
        m[i, i] = 1
    return m


def build_folder(root, shapes_masks: list[tuple[np.ndarray, str]], spacing=(0.5, 0.6)):
    """PNG slices (random windowed images) with the given masks; ``""`` patient = one per slice."""
    rng = np.random.default_rng(0)
    rows = []
    for i, (mask, split) in enumerate(shapes_masks):
        write_png(root / f"img{i}.png", rng.integers(0, 256, mask.shape, dtype=np.uint8))
        row = {"image": f"img{i}.png", "patient": f"s{i}", "split": split}
        if split != "unlabeled":
            write_png(root / f"m{i}.png", mask)
            row["mask"] = f"m{i}.png"
        rows.append(row)
    write_spec(root, intensity="windowed-uint8", lesion_labels=[1], labels={"1": "lesion"}, spacing_mm=list(spacing))
    write_manifest(root, rows)
    return root


def test_native_slices_are_the_stored_masks_and_spacing(tmp_path):
    masks = [half_mask(100, 80), diagonal_mask(100, 80), half_mask(SIZE, SIZE), np.zeros((50, 70), np.uint8)]
    root = build_folder(tmp_path / "ds", list(zip(masks, ["", "", "", "unlabeled"])))
    data = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    assert data.shape == (SIZE, SIZE) and data.origin.tolist() == [0, 1, 2, 3]
    native = native_slices(data.subset([3, 1, 2]))
    assert [n.shape for n in native] == [(50, 70), (100, 80), (SIZE, SIZE)]
    np.testing.assert_array_equal(native[1].mask, masks[1])  # the stored mask, not a resize of the resized one
    assert native[1].spacing == pytest.approx((0.5, 0.6))
    assert native[0].mask.sum() == 0  # unlabeled row: empty mask of its original size
    # A row already at the model size is its own original, bit for bit.
    np.testing.assert_array_equal(native[2].mask, data.masks[2])
    assert native[2].spacing == (float(data.spacing[2, 0]), float(data.spacing[2, 1]))
    # A cached load keeps what native_slices needs.
    again = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(native_slices(again.subset([1]))[0].mask, masks[1])
    # Hand-built or concatenated sets have no originals.
    assert native_slices(SliceSet.concat([data, data])) is None


def test_prediction_is_scored_at_100x80_against_the_original_mask(tmp_path):
    masks = [half_mask(100, 80), diagonal_mask(100, 80)]
    data = load_dataset(build_folder(tmp_path / "ds", [(m, "") for m in masks]), size=SIZE, cache_dir=tmp_path / "c")
    test = data.subset([0, 1])
    test = SliceSet(**{**test.__dict__, "native": native_slices(test)})
    summary, per_slice, pred, spacing = score(Oracle(test), test, 0.5)
    assert pred.shape == (2, SIZE, SIZE)
    # Perfect at the model size stays perfect at 100x80 for a mask that survives resampling ...
    assert per_slice[0]["dice"] == 1.0 and per_slice[0]["true_fraction"] == masks[0].mean()
    # ... and a thin structure is judged on its original pixels (the model-size score would be 1).
    assert evaluate(pred[1], test.masks[1])[0]["dice"] == 1.0
    native_pred = resample_to(test.masks.astype(np.float32), [(100, 80)] * 2, 0.5)
    assert native_pred[1].shape == (100, 80)
    expected = evaluate(native_pred[1], masks[1])[0]["dice"]
    assert per_slice[1]["dice"] == pytest.approx(expected) and expected < 0.9
    assert summary["true_fraction"] == pytest.approx((masks[0].sum() + masks[1].sum()) / (2 * 100 * 80))
    np.testing.assert_allclose(spacing, [[0.5, 0.6]] * 2)  # HD95 in mm, at the original spacing
    # The Inf-Net set is scored on the same maps, resampled to 100x80 (not thresholded), vs the original masks.
    native_proba = resample_proba(test.masks.astype(np.float32), [(100, 80)] * 2)
    assert {k: summary[k] for k in INFNET_KEYS} == infnet_metrics(native_proba, masks)


def test_model_size_slices_score_exactly_as_before(tmp_path):
    """Phantom-like data (stored at data.size): native scoring = the old model-size scoring, bit for bit."""
    rng = np.random.default_rng(3)
    masks = [(rng.random((SIZE, SIZE)) < 0.2).astype(np.uint8) for _ in range(4)]
    data = load_dataset(build_folder(tmp_path / "ds", [(m, "") for m in masks]), size=SIZE, cache_dir=tmp_path / "c")
    test = SliceSet(**{**data.__dict__, "native": native_slices(data)})

    class Noisy(Oracle):
        def predict_proba(self, images):
            return np.random.default_rng(1).random(images.shape, dtype=np.float32)

    new = score(Noisy(test), test, 0.5)
    pred = (Noisy(test).predict_proba(test.images) >= 0.5).astype(np.uint8)
    old = evaluate(pred, test.masks, test.spacing)
    assert {k: new[0][k] for k in old[0]} == old[0] and new[1] == old[1]
    assert {k: new[0][k] for k in INFNET_KEYS} == infnet_metrics(list(Noisy(test).predict_proba(test.images)), masks)


def test_ragged_evaluate_matches_per_slice_and_rejects_mismatch():
    a, b = half_mask(100, 80), diagonal_mask(20, 30)
    summary, rows = evaluate([a, b], [a, np.zeros_like(b)])
    assert rows[0]["dice"] == 1.0 and np.isnan(rows[1]["dice"]) and summary["fp_empty_slices"] == 1
    assert summary["pred_fraction"] == pytest.approx((a.sum() + b.sum()) / (a.size + b.size))
    with pytest.raises(ValueError, match="same shape"):
        evaluate([a], [b])


def _semiseg(tmp_path, *, with_test: bool):
    from fewshot_transfer.data.importers import import_dataset

    src = tmp_path / "src"
    build_semiseg(src)
    if not with_test:
        shutil.rmtree(src / "TestingSet")
    out = tmp_path / "semiseg"
    import_dataset("semiseg", src, out)
    return out


def _bench(tmp_path, target, *overrides):
    cfg = resolve_config(
        None,
        [
            f"data.source='{target}'",
            f"data.target='{target}'",
            f"data.size={SIZE}",
            f"data.cache_dir='{tmp_path / 'cache'}'",
            "data.split.source_val=0.0",
            "run.shots='1,all'",
            *overrides,
        ],
    )
    return prepare(cfg, tmp_path / f"run{len(list(tmp_path.glob('run*')))}")


def test_semiseg_layout_all_shots_are_every_labeled_training_slice_and_scored_native(tmp_path):
    bench = _bench(tmp_path, _semiseg(tmp_path, with_test=True))
    # 2 doctor-labeled train slices (both with lesions), 2 test slices stored at 64x64, 3 unlabeled.
    assert len(bench.support_pool) == 2 and bench.eligible == 2 and dict(bench.shots)["all"] == 2
    assert len(bench.unlabeled_pool) == 3 and not bench.unlabeled_pool.labeled.any()
    assert len(bench.test_set) == 2 and bench.resolution == "native"
    assert [n.shape for n in bench.test_set.native] == [(64, 64), (64, 64)]
    assert bench.support_pool.native is None and bench.unlabeled_pool.native is None  # test only
    summary, per_slice, _, _ = score(Oracle(bench.test_set), bench.test_set, 0.5)
    assert summary["n_slices"] == 2 and 0.0 < summary["dice"] <= 1.0
    assert header_meta([{"resolution": "native"}])["scored at"].startswith("native")
    assert "32x32" in header_meta([{"resolution": "32x32"}])["scored at"]


def test_semiseg_without_test_split_uses_folds(tmp_path):
    target = _semiseg(tmp_path, with_test=False)
    with pytest.raises(ValueError, match="empty test set|folds"):
        _bench(tmp_path, target, "data.split.folds=3")  # 2 labeled slices cannot make 3 folds
    benches = [_bench(tmp_path, target, "data.split.folds=2", f"data.split.fold={i}") for i in range(2)]
    tests = [set(b.split.test) for b in benches]
    assert tests[0].isdisjoint(tests[1]) and tests[0] | tests[1] == {"3", "17"}
    for b in benches:
        assert b.eligible == 1 and len(b.test_set) == 1 and len(b.unlabeled_pool) == 3
        saved = (b.out_dir / "split.json").read_text()
        assert '"folds"' in saved and '"fold"' in saved
    assert benches[0].split.folds == benches[1].split.folds
    # The run directory's split names its fold; another fold in the same directory is refused.
    plan = benches[0].plan
    other = dataclasses.replace(plan, data=dataclasses.replace(plan.data, split={**plan.data.split, "fold": 1}))
    with pytest.raises(ValueError, match="use another --out for each fold"):
        prepare(other, benches[0].out_dir)
