"""load_dataset / load_domain: values, resizing, intensity conventions, the cache."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings

import numpy as np
import pytest

from fewshot_transfer.data import cache
from fewshot_transfer.data.cache import CacheWarning
from fewshot_transfer.data.errors import DatasetError, DatasetWarning, IntensityConventionWarning
from fewshot_transfer.data.loader import load_dataset, load_domain
from fewshot_transfer.data.slices import hu_to_unit

from fixtures_datasets import (
    N_Z,
    SIZE,
    SPACING,
    build_nifti_dataset,
    build_png_dataset,
    make_case,
    windowed,
    write_manifest,
    write_nifti,
    write_png,
    write_spec,
)

TOL = 1.0 / 131070 + 1e-7  # uint16 cache quantization


def _check(data, exp):
    assert len(data) == exp.n
    assert data.patients.tolist() == exp.patients
    assert data.splits.tolist() == exp.splits
    assert data.labeled.tolist() == exp.labeled
    assert data.slice_index.tolist() == exp.slice_index
    np.testing.assert_array_equal(data.masks, np.stack(exp.masks))
    np.testing.assert_allclose(data.images, np.stack(exp.images), atol=TOL)


def test_nifti_dataset_values(tmp_path):
    exp = build_nifti_dataset(tmp_path / "ds", lungs=True, unlabeled=1)
    data = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    _check(data, exp)
    assert data.images.dtype == np.float32 and data.masks.dtype == np.uint8
    assert data.labeled.dtype == bool and data.slice_index.dtype == np.int32
    np.testing.assert_allclose(data.spacing, np.tile(SPACING[:2], (exp.n, 1)), rtol=1e-6)
    lungs = np.concatenate([make_case(i).lung for i in range(4)])
    np.testing.assert_array_equal(data.lungs, lungs)
    assert data.name == "ds" and len(data.fingerprint) == 16
    assert data.meta["native_shapes"] == {f"{SIZE}x{SIZE}": exp.n}
    assert data.meta["source"] == str(exp.root.resolve())


def test_png_dataset_and_slice_counters(tmp_path):
    exp = build_png_dataset(tmp_path / "png")
    data = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    _check(data, exp)
    np.testing.assert_allclose(data.spacing[0], [0.7, 0.8], rtol=1e-6)
    assert data.lungs is None


def test_single_slice_rows_npy_and_rgb(tmp_path):
    root = tmp_path / "mixed"
    case = make_case(3)
    write_nifti(root / "vol.nii.gz", case.hu.astype(np.int16))
    write_nifti(root / "lab.nii.gz", case.labels)
    np.save(root / "s.npy", case.hu[2])
    np.save(root / "stack.npy", case.hu[:2])
    rgb = np.repeat(windowed(case.hu[1])[..., None], 3, axis=2)
    from PIL import Image

    Image.fromarray(rgb).save(root / "rgb.png")
    write_png(root / "rgb_mask.png", case.labels[1])
    write_spec(root)
    write_manifest(
        root,
        [
            {"image": "vol.nii.gz", "mask": "lab.nii.gz", "patient": "a", "slice": "2"},
            {"image": "vol.nii.gz", "mask": "lab.nii.gz", "patient": "a", "slice": "0"},
            {"image": "s.npy", "patient": "b", "slice": "7"},
            {"image": "stack.npy", "patient": "c"},
            {"image": "rgb.png", "mask": "rgb_mask.png", "patient": "d", "intensity": "windowed-uint8"},
        ],
        ("image", "mask", "patient", "split", "slice", "intensity"),
    )
    data = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    assert data.patients.tolist() == ["a", "a", "b", "c", "c", "d"]
    assert data.slice_index.tolist() == [2, 0, 7, 0, 1, 0]
    assert data.labeled.tolist() == [True, True, False, False, False, True]
    np.testing.assert_allclose(data.images[0], hu_to_unit(case.hu[2]), atol=TOL)
    np.testing.assert_array_equal(data.masks[0], case.lesion()[2])
    np.testing.assert_allclose(data.images[2], hu_to_unit(case.hu[2]), atol=TOL)
    np.testing.assert_allclose(data.images[5], windowed(case.hu[1]) / 255.0, atol=TOL)
    assert np.isnan(data.spacing[2]).all()


def test_nifti_scaling_is_honoured(tmp_path):
    import nibabel as nib

    root = tmp_path / "scaled"
    root.mkdir()
    hu = make_case(4).hu + 0.25
    img = nib.Nifti1Image(np.transpose(hu, (2, 1, 0)), np.diag([0.8, 0.7, 5.0, 1.0]))
    img.set_data_dtype(np.int16)
    nib.save(img, root / "v.nii")
    stored = nib.load(root / "v.nii")
    slope, inter = stored.dataobj.slope, stored.dataobj.inter
    assert (slope, inter) != (1.0, 0.0)
    write_spec(root)
    write_manifest(root, [{"image": "v.nii", "patient": "s"}])
    data = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(data.images, hu_to_unit(hu), atol=abs(slope) / 1500 + TOL)


def test_resize_updates_spacing_and_keeps_masks_binary(tmp_path):
    exp = build_nifti_dataset(tmp_path / "ds")
    data = load_dataset(exp.root, size=SIZE // 2, cache_dir=tmp_path / "cache")
    assert data.shape == (SIZE // 2, SIZE // 2)
    np.testing.assert_allclose(data.spacing[0], [2 * SPACING[0], 2 * SPACING[1]], rtol=1e-6)
    assert set(np.unique(data.masks)) <= {0, 1} and data.masks.any()
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    big = load_dataset(exp.root, size=48, cache_dir=tmp_path / "cache")
    assert big.shape == (48, 48) and big.fingerprint != data.fingerprint


def test_non_square_images_are_stretched(tmp_path):
    root = tmp_path / "wide"
    case = make_case(5, width=2 * SIZE)
    write_nifti(root / "v.nii.gz", case.hu.astype(np.int16))
    write_nifti(root / "m.nii.gz", case.labels)
    write_spec(root)
    write_manifest(root, [{"image": "v.nii.gz", "mask": "m.nii.gz", "patient": "w"}])
    data = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    assert data.images.shape == (N_Z, SIZE, SIZE)
    np.testing.assert_allclose(data.spacing[0], [SPACING[0], 2 * SPACING[1]], rtol=1e-6)
    assert data.meta["native_shapes"] == {f"{SIZE}x{2 * SIZE}": N_Z}


def test_windowed_uint8_with_other_window_lands_on_lung_scale(tmp_path):
    root = tmp_path / "win"
    case = make_case(7)
    window = (-1000.0, 400.0)
    write_nifti(root / "v.nii.gz", windowed(case.hu, window))
    write_spec(root, intensity="windowed-uint8", window=list(window))
    write_manifest(root, [{"image": "v.nii.gz", "patient": "w"}])
    data = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    inside = (case.hu > window[0]) & (case.hu < 250)
    np.testing.assert_allclose(
        data.images[inside], hu_to_unit(case.hu)[inside], atol=(window[1] - window[0]) / 255 / 1500 + 1e-4
    )


def test_cache_hit_is_fast_and_identical(tmp_path):
    exp = build_nifti_dataset(tmp_path / "ds", n_patients=4, lungs=True)
    first = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 1
    start = time.perf_counter()
    second = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - start < 0.5
    for attr in ("images", "masks", "labeled", "patients", "slice_index", "splits", "spacing", "lungs"):
        np.testing.assert_array_equal(getattr(first, attr), getattr(second, attr))
    assert first.fingerprint == second.fingerprint
    assert load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache", name="renamed").name == "renamed"
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_cache_invalidated_when_a_file_changes(tmp_path):
    exp = build_nifti_dataset(tmp_path / "ds")
    first = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    case = make_case(0)
    write_nifti(exp.root / "images/p00.nii.gz", (case.hu + 100).astype(np.int16))
    second = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    assert second.fingerprint != first.fingerprint
    np.testing.assert_allclose(second.images[:N_Z], hu_to_unit(case.hu + 100), atol=TOL)
    spec = json.loads((exp.root / "dataset.json").read_text())
    spec["lesion_labels"] = [1]
    (exp.root / "dataset.json").write_text(json.dumps(spec))
    third = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    assert third.masks.sum() < second.masks.sum()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


def test_fingerprint_is_content_based_and_portable(tmp_path):
    exp = build_nifti_dataset(tmp_path / "ds")
    first = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    copy = tmp_path / "elsewhere" / "ds"
    shutil.copytree(exp.root, copy)
    for path in copy.rglob("*.nii.gz"):
        os.utime(path, ns=(1, 1))
    moved = load_dataset(copy, size=SIZE, cache_dir=tmp_path / "cache")
    assert moved.fingerprint == first.fingerprint
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_corrupt_cache_is_rebuilt_with_warning(tmp_path):
    exp = build_nifti_dataset(tmp_path / "ds")
    first = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(CacheWarning, match="unreadable"):
        second = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.images, second.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "cache")


def test_unwritable_cache_only_warns(tmp_path):
    exp = build_nifti_dataset(tmp_path / "ds")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.warns(CacheWarning, match="cannot write"):
        data = load_dataset(exp.root, size=SIZE, cache_dir=tmp_path / "a-file" / "cache")
    assert len(data) == exp.n


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "root"))
    assert cache.default_cache_dir() == tmp_path / "root" / "datasets"
    exp = build_png_dataset(tmp_path / "png")
    load_dataset(exp.root, size=SIZE)
    assert len(list((tmp_path / "root" / "datasets").glob("*.npz"))) == 1


def test_hu_declared_for_windowed_values_warns_each_load(tmp_path, caplog):
    root = tmp_path / "mislabeled"
    write_nifti(root / "v.nii.gz", windowed(make_case(1).hu))
    write_spec(root, intensity="hu")
    write_manifest(root, [{"image": "v.nii.gz", "patient": "p"}])
    with pytest.warns(IntensityConventionWarning) as record:
        load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    message = str(record[0].message)
    assert str(root / "v.nii.gz") in message
    assert '"intensity": "windowed-uint8"' in message and "dataset.json" in message
    assert any("windowed-uint8" in r.getMessage() for r in caplog.records)
    with pytest.warns(IntensityConventionWarning):
        data = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    assert data.meta["warnings"][0]["kind"] == "intensity"


def test_partial_lung_column_warns_and_drops_lungs(tmp_path):
    root = tmp_path / "lungs"
    case = make_case(2)
    write_nifti(root / "a.nii.gz", case.hu.astype(np.int16))
    write_nifti(root / "b.nii.gz", case.hu.astype(np.int16))
    write_nifti(root / "l.nii.gz", case.lung)
    write_spec(root)
    write_manifest(
        root,
        [{"image": "a.nii.gz", "patient": "a", "lung": "l.nii.gz"}, {"image": "b.nii.gz", "patient": "b"}],
        ("image", "mask", "patient", "lung"),
    )
    with pytest.warns(DatasetWarning, match="only some rows have a lung mask"):
        data = load_dataset(root, size=SIZE, cache_dir=tmp_path / "cache")
    assert data.lungs is None


def test_load_domain_phantom_matches_generator_and_caches(tmp_path):
    from fewshot_transfer.data.phantom import generate_slices

    opts = {"n_patients": 3, "n_slices": 4}
    data = load_domain("phantom:covid", size=32, cache_dir=tmp_path, phantom=opts)
    ref = generate_slices("covid", 3, size=32, n_slices=4)
    np.testing.assert_array_equal(data.masks, ref.masks)
    np.testing.assert_array_equal(data.lungs, ref.lungs)
    np.testing.assert_allclose(data.images, ref.images, atol=0.5 / 1500 + TOL)
    assert data.patients.tolist() == ref.patients.tolist()
    assert data.name == "phantom-covid" and data.meta["phantom"]["n_patients"] == 3
    exports = list((tmp_path / "phantoms").iterdir())
    assert len(exports) == 1 and (exports[0] / "manifest.csv").is_file()
    start = time.perf_counter()
    again = load_domain("phantom:covid", size=32, cache_dir=tmp_path, phantom=opts)
    assert time.perf_counter() - start < 0.5
    assert again.fingerprint == data.fingerprint
    assert len(list((tmp_path / "phantoms").iterdir())) == 1
    (exports[0] / "masks" / f"{ref.patients[0]}.nii.gz").unlink()
    repaired = load_domain("phantom:covid", size=32, cache_dir=tmp_path, phantom=opts)
    assert repaired.fingerprint == data.fingerprint
    np.testing.assert_array_equal(repaired.masks, ref.masks)


def test_load_domain_phantom_profile_override(tmp_path):
    data = load_domain(
        "phantom:cap",
        size=32,
        cache_dir=tmp_path,
        phantom={"n_patients": 2, "n_slices": 2, "profile": {"intensity": "windowed-uint8"}},
    )
    (export,) = (tmp_path / "phantoms").iterdir()
    assert json.loads((export / "dataset.json").read_text())["intensity"] == "windowed-uint8"
    assert data.meta["phantom"]["profile"]["intensity"] == "windowed-uint8"


def test_load_domain_path_and_errors(tmp_path):
    exp = build_png_dataset(tmp_path / "png")
    assert len(load_domain(str(exp.root), size=SIZE, cache_dir=tmp_path / "cache")) == exp.n
    with pytest.raises(DatasetError, match='did you mean "phantom:covid"'):
        load_domain("covid", size=SIZE, cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match="unknown phantom option"):
        load_domain("phantom:covid", size=SIZE, cache_dir=tmp_path, phantom={"patients": 3})
    with pytest.raises(DatasetError, match="unknown phantom profile field"):
        load_domain("phantom:covid", size=SIZE, cache_dir=tmp_path, phantom={"profile": {"noise": 1}})
    with pytest.raises(DatasetError, match="phantom domain"):
        load_domain("phantom:flu", size=SIZE, cache_dir=tmp_path)
    with pytest.raises(DatasetError, match="positive integer"):
        load_dataset(exp.root, size=0, cache_dir=tmp_path / "cache")
