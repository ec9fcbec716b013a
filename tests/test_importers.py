"""Each importer -> load gives the right slices, labels, splits, patients and intensities."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fewshot_transfer.data.dataset_format import read_manifest, read_spec
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers import import_dataset, plan_import
from fewshot_transfer.data.importers.common import parse_label_list, slice_group
from fewshot_transfer.data.importers.covid19_ct_seg import case_key
from fewshot_transfer.data.info import PATIENTS_UNKNOWN, summarize
from fewshot_transfer.data.loader import load_dataset

from fixtures_datasets import (
    PSEUDO_SLICES,
    SIZE,
    build_covid19_ct_seg,
    build_folder,
    build_medseg,
    build_mosmed,
    build_msd,
    build_semiseg,
    build_semiseg_pseudo,
    make_case,
    windowed,
    write_nifti,
)

CACHE_TOL = 1.0 / 131070 + 1e-7


def _load(tmp_path, kind, exp, **kwargs):
    report = import_dataset(kind, exp.root, tmp_path / f"out-{kind}", **kwargs)
    return report, load_dataset(report.out_dir, size=SIZE, cache_dir=tmp_path / "cache")


def _check(data, exp, *, images=True, tol=CACHE_TOL):
    assert data.patients.tolist() == exp.patients
    assert data.splits.tolist() == exp.splits
    assert data.labeled.tolist() == exp.labeled
    assert data.slice_index.tolist() == exp.slice_index
    for got, want in zip(data.masks, exp.masks):
        if want.shape != got.shape:
            step = want.shape[0] // got.shape[0]
            want = want[step // 2 :: step, step // 2 :: step]
        np.testing.assert_array_equal(got, want)
    if images:
        np.testing.assert_allclose(data.images, np.stack(exp.images), atol=tol)


def test_medseg(tmp_path):
    exp = build_medseg(tmp_path / "src")
    report, data = _load(tmp_path, "medseg", exp)
    _check(data, exp)
    assert report.rows == 8 and report.labeled_rows == 6 and report.placed == {"link": 3}
    spec = read_spec(report.out_dir)
    assert spec.lesion_labels == (1, 2) and spec.labels[3] == "pleural effusion"
    assert not spec.patients_known
    rows = read_manifest(report.out_dir)
    assert {r.image for r in rows} == {"images/tr_im.nii.gz", "images/val_im.nii.gz"}
    assert rows[4].slice == 4
    assert PATIENTS_UNKNOWN in summarize(data).warnings


def test_medseg_lesion_labels_option(tmp_path):
    exp = build_medseg(tmp_path / "src", lesion_labels=(1,))
    _, data = _load(tmp_path, "medseg", exp, lesion_labels=(1,))
    _check(data, exp)


def test_medseg2_volumes_with_lungs(tmp_path):
    src = tmp_path / "src"
    for i in range(2):
        case = make_case(700 + i)
        write_nifti(src / "rp_im" / f"{i + 1}.nii.gz", case.hu.astype(np.int16))
        write_nifti(src / "rp_msk" / f"{i + 1}.nii.gz", case.labels)
        write_nifti(src / "rp_lung_msk" / f"{i + 1}.nii.gz", case.lung)
    report = import_dataset("medseg", src, tmp_path / "out")
    data = load_dataset(report.out_dir, size=SIZE, cache_dir=tmp_path / "cache")
    assert data.patient_ids() == ["medseg2-1", "medseg2-2"]
    np.testing.assert_array_equal(data.lungs[:4], make_case(700).lung)
    np.testing.assert_array_equal(data.masks[:4], make_case(700).lesion((1, 2)))
    assert read_spec(report.out_dir).patients_known


@pytest.mark.parametrize("combined", [False, True])
def test_covid19_ct_seg_mixed_intensity(tmp_path, combined):
    exp = build_covid19_ct_seg(tmp_path / "src", combined=combined)
    report, data = _load(tmp_path, "covid19-ct-seg", exp)
    _check(data, exp)
    rows = read_manifest(report.out_dir)
    spec = read_spec(report.out_dir)
    assert spec.lesion_labels == ((3,) if combined else (1,))
    effective = [r.intensity or spec.intensity for r in rows]
    assert effective == ["hu", "hu", "windowed-uint8", "windowed-uint8"]
    assert data.lungs is not None
    assert report.patients == 4 and "coronacases_000" in data.patients.tolist()


def test_covid19_ct_seg_hu_and_windowed_normalize_alike(tmp_path):
    src = tmp_path / "src"
    case = make_case(900)
    write_nifti(src / "ct_scans" / "coronacases_org_001.nii.gz", case.hu.astype(np.int16))
    write_nifti(src / "ct_scans" / "radiopaedia_org_covid-19-pneumonia-7_85703_0-dcm.nii.gz", windowed(case.hu))
    for name in ("coronacases_001.nii.gz", "radiopaedia_7_85703_0.nii.gz"):
        write_nifti(src / "infection_mask" / name, case.lesion())
    report = import_dataset("covid19-ct-seg", src, tmp_path / "out")
    data = load_dataset(report.out_dir, size=SIZE, cache_dir=tmp_path / "cache")
    hu_rows, win_rows = data.images[:4], data.images[4:]
    assert np.abs(hu_rows - win_rows).max() <= 0.5 / 255 + 0.5 / 1500 + 2 * CACHE_TOL
    np.testing.assert_array_equal(data.masks[:4], data.masks[4:])


def test_case_key_matches_kaggle_and_zenodo_names():
    assert case_key("coronacases_org_001.nii") == case_key("coronacases_001.nii.gz") == "coronacases_001"
    assert case_key("radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm.nii.gz") == "radiopaedia_10_85902_1"
    assert case_key("radiopaedia_10_85902_1.nii.gz") == "radiopaedia_10_85902_1"


def test_mosmed(tmp_path):
    exp = build_mosmed(tmp_path / "src")
    report, data = _load(tmp_path, "mosmed", exp)
    _check(data, exp)
    assert report.labeled_rows == 2 and report.rows == 3
    only = import_dataset("mosmed", exp.root, tmp_path / "labeled", labeled_only=True)
    assert only.rows == 2
    assert not (tmp_path / "labeled" / "images" / "CT-0").exists()


def test_semiseg_splits_binarized_gt_and_no_pseudo_labels(tmp_path):
    exp = build_semiseg(tmp_path / "src")
    report, data = _load(tmp_path, "semiseg", exp)
    _check(data, exp, images=False)
    out = report.out_dir
    assert not any(
        "Pseudo" in p.as_posix() or (p.parent.name == "unlabeled" and p.suffix == ".png") for p in out.rglob("*")
    )
    assert {r.mask for r in read_manifest(out) if r.split == "unlabeled"} == {""}
    assert data.masks[data.splits == "unlabeled"].sum() == 0
    from PIL import Image

    gt = np.asarray(Image.open(out / "masks/train/3.png"))
    assert set(np.unique(gt)) == {0, 255}
    spec = read_spec(out)
    assert spec.intensity == "windowed-uint8" and spec.lesion_labels == (255,) and not spec.patients_known
    assert data.meta["native_shapes"] == {f"{SIZE}x{SIZE}": 5, f"{2 * SIZE}x{2 * SIZE}": 2}
    assert report.placed == {"link": 7, "converted": 4}


def test_semiseg_from_parent_dataset_folder(tmp_path):
    build_semiseg(tmp_path / "Inf-Net" / "Dataset")
    plan = plan_import("semiseg", tmp_path / "Inf-Net")
    assert sum(1 for r in plan.rows if r.split == "test") == 2


@pytest.mark.parametrize("v2", [True, False])
def test_msd(tmp_path, v2):
    exp = build_msd(tmp_path / "src", v2=v2)
    report, data = _load(tmp_path, "msd", exp)
    _check(data, exp)
    spec = read_spec(report.out_dir)
    assert spec.lesion_labels == (1, 2) and spec.labels == {1: "ggo", 2: "consolidation"}
    assert spec.name == "Task99_Toy"
    assert not any(p.name.startswith("._") for p in report.out_dir.rglob("*"))


def test_msd_lesion_labels_and_modality(tmp_path):
    exp = build_msd(tmp_path / "src")
    _, data = _load(tmp_path, "msd", exp, lesion_labels=(2,))
    np.testing.assert_array_equal(data.masks[:3], (make_case(300, n_z=3).labels == 2).astype(np.uint8))
    meta = json.loads((exp.root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T2"}
    (exp.root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="'T2'"):
        import_dataset("msd", exp.root, tmp_path / "mri")


def test_folder_csv(tmp_path):
    exp = build_folder(tmp_path / "src", outside=tmp_path / "elsewhere")
    report, data = _load(tmp_path, "folder", exp)
    _check(data, exp)
    rows = read_manifest(report.out_dir)
    assert rows[0].image == "imgs/s0.npy" and rows[0].intensity == "hu"
    assert rows[1].image.startswith("external/") and rows[1].intensity == ""
    spec = read_spec(report.out_dir)
    assert spec.intensity == "windowed-uint8" and spec.lesion_labels == (1,)


def test_files_are_hard_linked_or_copied(tmp_path):
    exp = build_mosmed(tmp_path / "src")
    linked = import_dataset("mosmed", exp.root, tmp_path / "linked")
    copied = import_dataset("mosmed", exp.root, tmp_path / "copied", copy=True)
    source = exp.root / "studies/CT-1/study_0255.nii.gz"
    assert os.stat(linked.out_dir / "images/CT-1/study_0255.nii.gz").st_ino == os.stat(source).st_ino
    assert os.stat(copied.out_dir / "images/CT-1/study_0255.nii.gz").st_ino != os.stat(source).st_ino
    assert copied.placed == {"copy": 5}


def test_helpers():
    assert slice_group("Data-1_coronacases_org_001_12") == "Data-1_coronacases_org_001"
    assert slice_group("18") == "18"
    assert slice_group("patient-7") == "patient"
    assert parse_label_list("1, 2") == (1, 2)
    with pytest.raises(DatasetError):
        parse_label_list("0,1")
    with pytest.raises(DatasetError):
        parse_label_list("ggo")
    with pytest.raises(DatasetError, match="unknown import kind"):
        import_dataset("dicom", "/tmp", "/tmp/x")


def test_info_warns_when_official_split_leaks(tmp_path):
    exp = build_folder(tmp_path / "src")
    table = exp.root / "list.csv"
    table.write_text(table.read_text().replace("pat1,test", "pat0,test"))
    _, data = _load(tmp_path, "folder", exp)
    warnings = summarize(data).warnings
    assert any("both train and test" in w and "pat0" in w for w in warnings)


def test_semiseg_pseudo_is_a_machine_labeled_source_with_sites(tmp_path):
    exp = build_semiseg_pseudo(tmp_path / "src")
    report, data = _load(tmp_path, "semiseg-pseudo", exp)
    _check(data, exp, images=False)
    spec = read_spec(report.out_dir)
    assert spec.label_origin == "model" and spec.lesion_labels == (255,) and spec.patients_known
    rows = read_manifest(report.out_dir)
    assert [(r.site, r.patient) for r in rows] == [(site, patient) for _, site, patient in PSEUDO_SLICES]
    assert report.patients == 4  # Radiopaedia case 10's two series are one patient
    info = summarize(data)
    assert info.label_origin == "model"
    assert info.sites == {"coronacases": {"slices": 3, "patients": 2}, "radiopaedia": {"slices": 3, "patients": 2}}
    assert any("labels made by a model" in w for w in info.warnings)


def test_semiseg_pseudo_site_filter(tmp_path):
    exp = build_semiseg_pseudo(tmp_path / "src")
    report = import_dataset("semiseg-pseudo", exp.root, tmp_path / "rp", sites=("radiopaedia",))
    rows = read_manifest(report.out_dir)
    assert {r.site for r in rows} == {"radiopaedia"} and report.rows == 3
    assert not any("coronacases" in p.name for p in report.out_dir.rglob("*"))
    with pytest.raises(DatasetError, match="its sites are coronacases, radiopaedia"):
        import_dataset("semiseg-pseudo", exp.root, tmp_path / "bad", sites=("mosmed",))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(DatasetError, match="records no sites"):
        import_dataset("semiseg", build_semiseg(tmp_path / "ss").root, tmp_path / "bad2", sites=("x",))


def test_label_origin_is_validated(tmp_path):
    exp = build_semiseg_pseudo(tmp_path / "src")
    out = import_dataset("semiseg-pseudo", exp.root, tmp_path / "out").out_dir
    meta = json.loads((out / "dataset.json").read_text())
    meta["label_origin"] = "robot"
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match='"label_origin" is \'robot\'; set it to "manual"'):
        read_spec(out)


def test_every_importer_module_declares_its_kind_once(capsys):
    """A kind is written in its module only: discovery finds every module of the package, and
    ``ftbench data import --help`` lists each one's own HELP line."""
    from pathlib import Path

    from fewshot_transfer.cli import main
    from fewshot_transfer.data import importers

    kinds = importers.builtin_kinds()
    modules = {m.__name__.rsplit(".", 1)[1] for m in kinds.values()}
    files = {p.stem for p in Path(importers.__file__).parent.glob("*.py")} - {"__init__", "common"}
    assert modules == files
    assert all(m.KIND == kind and m.HELP and m.LAYOUT and callable(m.plan) for kind, m in kinds.items())
    with pytest.raises(SystemExit):
        main(["data", "import", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind, module in kinds.items():
        assert f"{kind} {' '.join(str(module.HELP).split())}" in text
