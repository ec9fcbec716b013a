"""dataset.json / manifest.csv: parsing, validation, writing, atomic folders."""

from __future__ import annotations

import json
import os

import pytest

from fewshot_transfer.data.dataset_format import (
    DatasetSpec,
    ManifestRow,
    atomic_dir,
    read_dataset,
    read_manifest,
    read_spec,
    write_manifest,
    write_spec,
)
from fewshot_transfer.data.errors import DatasetError


def _spec(root, **fields):
    data = {"name": "toy", "intensity": "hu", "lesion_labels": [1]}
    data.update(fields)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(data))


def _manifest(root, text):
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.csv").write_text(text)


def test_spec_defaults_and_round_trip(tmp_path):
    _spec(tmp_path, labels={"1": "GGO", "3": "effusion"}, ignore_labels=[4], spacing_mm=[0.7, 0.8])
    spec = read_spec(tmp_path)
    assert spec.window == (-1250.0, 250.0)
    assert spec.labels == {1: "GGO", 3: "effusion"}
    assert spec.other_labels == (4,)
    assert spec.spacing_mm == (0.7, 0.8)
    assert spec.allowed_mask_values() == {0, 1, 3, 4}
    assert spec.patients_known
    out = tmp_path / "copy"
    out.mkdir()
    write_spec(out, spec)
    assert read_spec(out) == spec


def test_spec_name_defaults_to_folder(tmp_path):
    root = tmp_path / "my-data"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"intensity": "windowed-uint8", "lesion_labels": [255]}))
    assert read_spec(root).name == "my-data"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"intensity": "HU16"}, "intensity"),
        ({"lesion_labels": []}, "lesion_labels"),
        ({"lesion_labels": [0, 1]}, "background"),
        ({"lesion_labels": ["1"]}, "lesion_labels"),
        ({"window": [250, -1250]}, "window"),
        ({"labels": {"ggo": "1"}}, "labels"),
        ({"spacing_mm": [0.7]}, "spacing_mm"),
        ({"spacing_mm": [0.7, -1]}, "spacing_mm"),
    ],
)
def test_spec_errors_name_file_and_field(tmp_path, fields, needle):
    _spec(tmp_path, **fields)
    with pytest.raises(DatasetError) as err:
        read_spec(tmp_path)
    assert str(tmp_path / "dataset.json") in str(err.value)
    assert needle in str(err.value)


def test_spec_invalid_json(tmp_path):
    (tmp_path / "dataset.json").write_text("{name: oops")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_spec(tmp_path)


def test_manifest_parsing(tmp_path):
    _manifest(
        tmp_path,
        "\ufeffimage, mask ,patient,split,slice,extra\na.nii.gz,m.nii.gz,p1,TRAIN,,x\n\na2.nii.gz,,p2,unlabeled,3,y\n",
    )
    rows = read_manifest(tmp_path)
    assert rows == [
        ManifestRow(image="a.nii.gz", mask="m.nii.gz", patient="p1", split="train"),
        ManifestRow(image="a2.nii.gz", patient="p2", split="unlabeled", slice=3),
    ]
    assert rows[0].labeled and not rows[1].labeled
    assert rows[1].line == 4


def test_manifest_optional_columns(tmp_path):
    _manifest(tmp_path, "image,mask,patient\nx.png,y.png,p\n")
    assert read_manifest(tmp_path) == [ManifestRow(image="x.png", mask="y.png", patient="p")]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("image,patient\na.png,p\n", "missing column(s) mask"),
        ("image,mask,patient\n", "lists no images"),
        ("", "missing column(s) image, mask, patient"),
        ("image,mask,patient,split\na.png,,p,validation\n", "split"),
        ("image,mask,patient,slice\na.nii,,p,two\n", "not an integer"),
        ("image,mask,patient,slice\na.nii,,p,-1\n", "negative"),
        ("image,mask,patient\na.png,,\n", "empty patient"),
        ("image,mask,patient\n,,p\n", "empty image"),
        ("image,mask,patient,slice\na.nii,,p,2\na.nii,,p,2\n", "repeats"),
        ("image,mask,patient,slice\na.nii,,p,\na.nii,,p,2\n", "already includes whole"),
        ("image,mask,patient,intensity\na.nii,,p,HU\n", "intensity"),
    ],
)
def test_manifest_errors(tmp_path, text, needle):
    _manifest(tmp_path, text)
    with pytest.raises(DatasetError) as err:
        read_manifest(tmp_path)
    assert str(tmp_path / "manifest.csv") in str(err.value)
    assert needle in str(err.value)


def test_manifest_round_trip_with_optional_columns(tmp_path):
    rows = [
        ManifestRow(image="i/a.nii.gz", mask="m/a.nii.gz", patient="a", split="train", lung="l/a.nii.gz"),
        ManifestRow(image="i/b.nii.gz", patient="b", split="unlabeled", slice=2, intensity="windowed-uint8"),
    ]
    write_manifest(tmp_path, rows)
    assert (tmp_path / "manifest.csv").read_text().splitlines()[0] == "image,mask,patient,split,slice,lung,intensity"
    assert read_manifest(tmp_path) == rows
    write_manifest(tmp_path, rows[:1] + [ManifestRow(image="c.png", patient="c")])
    assert "intensity" not in (tmp_path / "manifest.csv").read_text().splitlines()[0]


def test_paths_must_stay_inside(tmp_path):
    root = tmp_path / "ds"
    _spec(root)
    (tmp_path / "outside.png").write_bytes(b"x")
    (root / "inside.png").parent.mkdir(parents=True, exist_ok=True)
    (root / "inside.png").write_bytes(b"x")
    _manifest(root, "image,mask,patient\ninside.png,,p\n")
    spec, rows = read_dataset(root)
    assert isinstance(spec, DatasetSpec) and len(rows) == 1
    for bad, needle in (("../outside.png", "outside the dataset folder"), (str(tmp_path / "outside.png"), "absolute")):
        _manifest(root, f"image,mask,patient\n{bad},,p\n")
        with pytest.raises(DatasetError, match=needle):
            read_dataset(root)
    os.symlink(tmp_path / "outside.png", root / "link.png")
    _manifest(root, "image,mask,patient\nlink.png,,p\n")
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        read_dataset(root)


def test_atomic_dir_success_and_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "f.txt").write_text("ok")
        assert not out.exists()
    assert (out / "f.txt").read_text() == "ok"
    with pytest.raises(DatasetError, match="not empty"):
        with atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "g.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["f.txt"]
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "g.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["g.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
