"""Phantom volumes -> NIfTI dataset folder -> load_dataset gives back the same slices."""

from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from fewshot_transfer.data.dataset_format import read_manifest, read_spec
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.export import hu_to_storage, write_phantom_dataset
from fewshot_transfer.data.loader import load_dataset
from fewshot_transfer.data.phantom import DEFAULT_PROFILES, PhantomVolume, generate_volumes, volumes_to_slices

CACHE_TOL = 1.0 / 131070 + 1e-7


@pytest.fixture(scope="module")
def volumes():
    return generate_volumes("covid", 3, size=48, n_slices=5, seed=1)


@pytest.mark.parametrize(("intensity", "tol"), [("hu", 0.5 / 1500), ("windowed-uint8", 0.5 / 255)])
def test_round_trip(tmp_path, volumes, intensity, tol):
    profile = replace(DEFAULT_PROFILES["covid"], intensity=intensity)
    out = write_phantom_dataset(volumes, tmp_path / "ds", name="phantom-covid", profile=profile)
    data = load_dataset(out, size=48, cache_dir=tmp_path / "cache")
    ref = volumes_to_slices(volumes, name="ref")
    np.testing.assert_array_equal(data.masks, ref.masks)
    np.testing.assert_array_equal(data.lungs, ref.lungs)
    np.testing.assert_allclose(data.images, ref.images, atol=tol + CACHE_TOL)
    assert data.patients.tolist() == ref.patients.tolist()
    assert data.slice_index.tolist() == ref.slice_index.tolist()
    np.testing.assert_allclose(data.spacing, ref.spacing, rtol=1e-6)
    assert data.labeled.all() and set(data.splits.tolist()) == {""}
    assert data.name == "phantom-covid"
    assert read_spec(out).intensity == intensity


def test_files_dtypes_and_affine(tmp_path, volumes):
    out = write_phantom_dataset(volumes, tmp_path / "ds", name="p", profile=DEFAULT_PROFILES["cap"])
    rows = read_manifest(out)
    assert [r.patient for r in rows] == [v.patient_id for v in volumes]
    assert rows[0].image == f"images/{volumes[0].patient_id}.nii.gz"
    img = nib.load(out / rows[0].image)
    assert img.get_data_dtype() == np.int16
    assert img.shape == (48, 48, 5)
    row, col, thick = volumes[0].spacing_mm
    np.testing.assert_allclose(img.header.get_zooms(), [col, row, thick], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 2].T, hu_to_storage(volumes[0].hu[2], "hu"))
    assert nib.load(out / rows[0].mask).get_data_dtype() == np.uint8
    assert nib.load(out / rows[0].lung).get_data_dtype() == np.uint8
    assert read_spec(out).spacing_mm == pytest.approx(volumes[0].spacing_mm[:2])


def test_hand_made_non_square_volume(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 100, size=(3, 40, 56)).astype(np.float32)
    lesion = (rng.random((3, 40, 56)) > 0.9).astype(np.uint8)
    vol = PhantomVolume("hand-1", "covid", hu, lesion, np.ones_like(lesion), (0.6, 0.9, 2.0))
    out = write_phantom_dataset([vol], tmp_path / "ds", name="hand", profile=None)
    img = nib.load(out / "images/hand-1.nii.gz")
    assert img.shape == (56, 40, 3)
    from fewshot_transfer.data.readers import read_image, read_label

    raw = read_image(out / "images/hand-1.nii.gz")
    np.testing.assert_array_equal(raw.data, hu)
    assert raw.spacing_mm == pytest.approx((0.6, 0.9))
    np.testing.assert_array_equal(read_label(out / "masks/hand-1.nii.gz").data, lesion)


def test_existing_output_and_overwrite(tmp_path, volumes):
    out = write_phantom_dataset(volumes[:1], tmp_path / "ds", name="a", profile=None)
    with pytest.raises(DatasetError, match="not empty"):
        write_phantom_dataset(volumes, out, name="b", profile=None)
    assert len(read_manifest(out)) == 1
    write_phantom_dataset(volumes, out, name="b", profile=None, overwrite=True)
    assert len(read_manifest(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_rejects_unsafe_or_duplicate_ids(tmp_path, volumes):
    bad = replace(volumes[0], patient_id="../escape")
    with pytest.raises(DatasetError, match="file-name-safe"):
        write_phantom_dataset([bad], tmp_path / "ds", name="x", profile=None)
    with pytest.raises(DatasetError, match="unique"):
        write_phantom_dataset([volumes[0], volumes[0]], tmp_path / "ds", name="x", profile=None)
    with pytest.raises(DatasetError, match="no phantom volumes"):
        write_phantom_dataset([], tmp_path / "ds", name="x", profile=None)
    assert list(tmp_path.iterdir()) == []
