"""Every bad input is a DatasetError that names the file and leaves no cache or output behind."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.export import write_phantom_dataset
from fewshot_transfer.data.importers import import_dataset
from fewshot_transfer.data.loader import load_dataset

from fixtures_datasets import (
    SIZE,
    build_nifti_dataset,
    build_semiseg,
    make_case,
    write_manifest,
    write_nifti,
    write_spec,
)


def _dataset(root, *, hu=None, labels=None, spec=None, rows=None):
    case = make_case(0)
    write_nifti(root / "img.nii.gz", (case.hu if hu is None else hu).astype(np.float32 if hu is not None else np.int16))
    write_nifti(root / "msk.nii.gz", case.labels if labels is None else labels)
    write_spec(root, **(spec or {}))
    write_manifest(root, rows or [{"image": "img.nii.gz", "mask": "msk.nii.gz", "patient": "p"}])
    return root


def _expect_error(root, cache, *needles):
    with pytest.raises(DatasetError) as err:
        load_dataset(root, size=SIZE, cache_dir=cache)
    message = str(err.value)
    for needle in needles:
        assert str(needle) in message, message
    assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())
    return message


def test_missing_image_file(tmp_path):
    root = _dataset(tmp_path / "ds", rows=[{"image": "nope.nii.gz", "mask": "msk.nii.gz", "patient": "p"}])
    _expect_error(root, tmp_path / "cache", root / "nope.nii.gz", "does not exist", "line 2")


def test_missing_mask_file(tmp_path):
    root = _dataset(tmp_path / "ds", rows=[{"image": "img.nii.gz", "mask": "masks/gone.nii.gz", "patient": "p"}])
    _expect_error(root, tmp_path / "cache", root / "masks/gone.nii.gz", "mask file")


def test_image_mask_shape_mismatch(tmp_path):
    root = _dataset(tmp_path / "ds", labels=np.zeros((4, SIZE, SIZE - 2), np.uint8))
    _expect_error(root, tmp_path / "cache", root / "img.nii.gz", root / "msk.nii.gz", "(4, 32, 30)", "must match")


def test_mask_values_outside_declared_labels(tmp_path):
    root = _dataset(tmp_path / "ds", spec={"labels": {}, "lesion_labels": [1, 2]})
    message = _expect_error(root, tmp_path / "cache", root / "msk.nii.gz", "mask values 3", "other_labels")
    assert "dataset.json" in message


def test_declared_other_labels_are_accepted(tmp_path):
    root = _dataset(tmp_path / "ds", spec={"labels": {}, "lesion_labels": [1, 2], "other_labels": [3]})
    data = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(data.masks, make_case(0).lesion((1, 2)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_voxels(tmp_path, bad):
    hu = make_case(0).hu.copy()
    hu[1, 3, 4] = bad
    root = _dataset(tmp_path / "ds", hu=hu)
    _expect_error(root, tmp_path / "cache", root / "img.nii.gz", "1 voxel(s) are NaN or Inf")


def test_corrupt_and_truncated_nifti(tmp_path):
    root = _dataset(tmp_path / "ds")
    good = (root / "img.nii.gz").read_bytes()
    (root / "img.nii.gz").write_bytes(b"definitely not gzip")
    _expect_error(root, tmp_path / "cache", root / "img.nii.gz", "re-download or re-export")
    (root / "img.nii.gz").write_bytes(good[: len(good) // 2])
    _expect_error(root, tmp_path / "cache", root / "img.nii.gz", "re-download or re-export")
    (root / "img.nii.gz").write_bytes(gzip.compress(b"\x00" * 400))
    _expect_error(root, tmp_path / "cache", root / "img.nii.gz")


def test_corrupt_png_and_unsupported_type(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "a.png").write_bytes(b"\x89PNG garbage")
    (root / "b.dcm").write_bytes(b"DICM")
    write_spec(root, intensity="windowed-uint8")
    write_manifest(root, [{"image": "a.png", "patient": "p"}])
    _expect_error(root, tmp_path / "cache", root / "a.png", "not a readable image")
    write_manifest(root, [{"image": "b.dcm", "patient": "p"}])
    _expect_error(root, tmp_path / "cache", root / "b.dcm", "unsupported file type", "dcm2niix")


def test_manifest_path_outside_folder(tmp_path):
    write_nifti(tmp_path / "secret.nii.gz", make_case(0).hu.astype(np.int16))
    root = _dataset(tmp_path / "ds", rows=[{"image": "../secret.nii.gz", "patient": "p"}])
    _expect_error(root, tmp_path / "cache", root / "manifest.csv", "../secret.nii.gz", "outside the dataset folder")


def test_missing_dataset_json_and_manifest(tmp_path):
    root = _dataset(tmp_path / "ds")
    (root / "manifest.csv").unlink()
    _expect_error(root, tmp_path / "cache", root, "no manifest.csv")
    (root / "dataset.json").unlink()
    _expect_error(root, tmp_path / "cache", root, "no dataset.json", "ftbench data import")
    _expect_error(tmp_path / "nowhere", tmp_path / "cache", tmp_path / "nowhere", "does not exist")


def test_manifest_missing_columns_and_empty(tmp_path):
    root = _dataset(tmp_path / "ds")
    (root / "manifest.csv").write_text("image,patient\nimg.nii.gz,p\n")
    _expect_error(root, tmp_path / "cache", root / "manifest.csv", "missing column(s) mask")
    (root / "manifest.csv").write_text("image,mask,patient,split,slice\n")
    _expect_error(root, tmp_path / "cache", root / "manifest.csv", "lists no images")


def test_windowed_declared_for_hu_values_is_an_error(tmp_path):
    root = _dataset(tmp_path / "ds", spec={"intensity": "windowed-uint8"})
    _expect_error(root, tmp_path / "cache", root / "img.nii.gz", 'set "intensity": "hu"')


def test_slice_out_of_range(tmp_path):
    root = _dataset(tmp_path / "ds", rows=[{"image": "img.nii.gz", "mask": "msk.nii.gz", "patient": "p", "slice": "9"}])
    _expect_error(root, tmp_path / "cache", root / "img.nii.gz", "slice 9 is out of range", "4 slices")


def test_non_integer_mask(tmp_path):
    labels = make_case(0).labels.astype(np.float32)
    labels[0, 0, 0] = 0.5
    root = _dataset(tmp_path / "ds", labels=labels)
    _expect_error(root, tmp_path / "cache", root / "msk.nii.gz", "non-integer")


def test_failure_after_good_rows_leaves_no_cache(tmp_path):
    exp = build_nifti_dataset(tmp_path / "ds", n_patients=3)
    (exp.root / "masks/p02.nii.gz").write_bytes(b"broken")
    _expect_error(exp.root, tmp_path / "cache", exp.root / "masks/p02.nii.gz")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_bad_spec_values(tmp_path):
    root = _dataset(tmp_path / "ds")
    spec = json.loads((root / "dataset.json").read_text())
    spec["intensity"] = "raw"
    (root / "dataset.json").write_text(json.dumps(spec))
    _expect_error(root, tmp_path / "cache", root / "dataset.json", '"intensity"')


def test_failed_import_leaves_no_output(tmp_path):
    exp = build_semiseg(tmp_path / "src")
    gt = exp.root / "TestingSet/LungInfection-Test/GT/21.png"
    gt.write_bytes(b"not a png")
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as err:
        import_dataset("semiseg", exp.root, out)
    assert str(gt) in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_failed_export_leaves_no_output(tmp_path, monkeypatch):
    from fewshot_transfer.data import export
    from fewshot_transfer.data.phantom import generate_volumes

    volumes = generate_volumes("covid", 3, size=32, n_slices=2)
    calls = {"n": 0}
    real = export.save_nifti

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "save_nifti", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_phantom_dataset(volumes, tmp_path / "out", name="x", profile=None)
    assert os.listdir(tmp_path) == []


def test_import_source_errors_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "missing")):
        import_dataset("medseg", tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    for kind, needle in (
        ("medseg", "tr_im"),
        ("covid19-ct-seg", "ct_scans"),
        ("mosmed", "studies"),
        ("semiseg", "Doctor-label"),
        ("msd", "dataset.json"),
        ("folder", "CSV"),
    ):
        with pytest.raises(DatasetError) as err:
            import_dataset(kind, tmp_path / "empty", tmp_path / "out")
        assert str(tmp_path / "empty") in str(err.value) and needle in str(err.value), str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["empty"]
