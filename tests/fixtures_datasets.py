"""Builders of tiny datasets in every layout the data layer reads, with known contents.

Each ``build_*`` function writes files into a folder and returns an :class:`Expected`
describing what a correct import + load at ``size=SIZE`` must return (slice order,
patients, splits, labels, normalized intensities). Volumes are 32 x 32 x 4 with integer
HU values (so int16 storage is exact) and known lesions: label 1 (ground glass,
-450 HU) in slices 1..3, label 2 (consolidation, 0 HU) in slice 2, label 3 (pleural
effusion, 10 HU, outside the lung) in slice 3; slice 0 is lesion-free.

Reused by the data-layer tests and by end-to-end tests that need a real dataset folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fewshot_transfer.data.export import save_nifti
from fewshot_transfer.data.importers.common import natural_key
from fewshot_transfer.data.slices import LUNG_WINDOW, hu_to_unit

SIZE = 32
N_Z = 4
SPACING = (0.7, 0.8, 5.0)


@dataclass
class Case:
    """One synthetic CT volume: HU, label map (0..3) and lung mask, all ``[Z, H, W]``."""

    hu: np.ndarray
    labels: np.ndarray
    lung: np.ndarray

    def lesion(self, lesion_labels: tuple[int, ...] = (1, 2)) -> np.ndarray:
        return np.isin(self.labels, lesion_labels).astype(np.uint8)

    def unit(self) -> np.ndarray:
        return hu_to_unit(self.hu)


@dataclass
class Expected:
    """What loading the built dataset must give, row for row (at ``size=SIZE``)."""

    root: Path
    patients: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    labeled: list[bool] = field(default_factory=list)
    slice_index: list[int] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)

    def add(self, patient: str, split: str, labeled: bool, z: int, mask: np.ndarray, image: np.ndarray | None) -> None:
        self.patients.append(patient)
        self.splits.append(split)
        self.labeled.append(labeled)
        self.slice_index.append(z)
        self.masks.append(mask if labeled else np.zeros_like(mask))
        if image is not None:
            self.images.append(image)

    @property
    def n(self) -> int:
        return len(self.patients)


def make_case(seed: int = 0, *, n_z: int = N_Z, size: int = SIZE, width: int | None = None) -> Case:
    """A deterministic little chest: air, body, two lungs, lesions with labels 1/2/3."""
    width = width or size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:width]
    cy, cx = size / 2, width / 2
    body = ((yy - cy) / (0.46 * size)) ** 2 + ((xx - cx) / (0.46 * width)) ** 2 <= 1
    right = ((yy - cy) / (0.3 * size)) ** 2 + ((xx - 0.3 * width) / (0.14 * width)) ** 2 <= 1
    left = ((yy - cy) / (0.3 * size)) ** 2 + ((xx - 0.7 * width) / (0.14 * width)) ** 2 <= 1
    hu = np.full((n_z, size, width), -1000.0, np.float32)
    labels = np.zeros((n_z, size, width), np.uint8)
    lung = np.zeros((n_z, size, width), np.uint8)
    for z in range(n_z):
        hu[z][body] = 40.0
        hu[z][right | left] = -820.0
        lung[z][right | left] = 1
    hu += rng.integers(-15, 16, size=hu.shape).astype(np.float32)
    for z in range(1, n_z):
        oy = int(rng.integers(-3, 4))
        disk = ((yy - (cy + oy)) ** 2 + (xx - 0.3 * width) ** 2 <= (2 + z) ** 2) & right
        labels[z][disk] = 1
        hu[z][disk] = -450.0
    if n_z > 2:
        blob = ((yy - cy) ** 2 + (xx - 0.7 * width) ** 2 <= 4) & left
        labels[2][blob] = 2
        hu[2][blob] = 0.0
    if n_z > 3:
        effusion = (yy > cy + 0.2 * size) & left & ~(labels[3] > 0)
        labels[3][effusion] = 3
        hu[3][effusion] = 10.0
        lung[3][effusion] = 0
    return Case(hu=hu, labels=labels, lung=lung)


def windowed(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """HU -> uint8 0..255 over ``window`` (how some public volumes are stored)."""
    lo, hi = window
    return np.rint((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)


def windowed_unit(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """The normalized image a loader must return for ``windowed(hu, window)``."""
    lo, hi = window
    return hu_to_unit(windowed(hu, window).astype(np.float32) / 255 * (hi - lo) + lo)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def write_jpg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, quality=95)
    return path


def write_nifti(path: Path, slices: np.ndarray, spacing: tuple[float, ...] = SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_nifti(path, slices, spacing)


def write_spec(root: Path, **fields: object) -> Path:
    spec = {
        "name": root.name,
        "modality": "CT",
        "intensity": "hu",
        "lesion_labels": [1, 2],
        "labels": {"1": "ground-glass opacity", "2": "consolidation", "3": "pleural effusion"},
        "spacing_mm": None,
    }
    spec.update(fields)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(spec, indent=2))
    return root / "dataset.json"


def write_manifest(
    root: Path, rows: list[dict], columns: tuple[str, ...] = ("image", "mask", "patient", "split", "slice")
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return root / "manifest.csv"


def build_nifti_dataset(
    root: Path,
    *,
    n_patients: int = 3,
    splits: tuple[str, ...] = ("train", "train", "test"),
    intensity: str = "hu",
    lungs: bool = False,
    unlabeled: int = 0,
) -> Expected:
    """A dataset folder in the native format: one NIfTI volume per patient (+ unlabeled patients)."""
    exp = Expected(root)
    rows = []
    for i in range(n_patients + unlabeled):
        case = make_case(i)
        pid = f"p{i:02d}"
        stored = case.hu.astype(np.int16) if intensity == "hu" else windowed(case.hu)
        image = f"images/{pid}.nii.gz"
        write_nifti(root / image, stored)
        is_labeled = i < n_patients
        split = splits[i % len(splits)] if is_labeled else "unlabeled"
        row = {"image": image, "patient": pid, "split": split}
        if is_labeled:
            row["mask"] = f"masks/{pid}.nii.gz"
            write_nifti(root / row["mask"], case.labels)
        if lungs:
            row["lung"] = f"lungs/{pid}.nii.gz"
            write_nifti(root / row["lung"], case.lung)
        rows.append(row)
        image_unit = case.unit() if intensity == "hu" else windowed_unit(case.hu)
        for z in range(N_Z):
            exp.add(pid, split, is_labeled, z, case.lesion()[z], image_unit[z])
    write_spec(root, intensity=intensity, spacing_mm=None)
    write_manifest(root, rows, ("image", "mask", "patient", "split", "slice") + (("lung",) if lungs else ()))
    return exp


def build_png_dataset(root: Path, *, n_patients: int = 2, mask_value: int = 255) -> Expected:
    """A dataset folder of 2D windowed PNG slices with 0/``mask_value`` PNG masks."""
    exp = Expected(root)
    rows = []
    for i in range(n_patients):
        case = make_case(10 + i)
        pid = f"png{i}"
        for z in range(N_Z):
            image = f"images/{pid}_{z}.png"
            write_png(root / image, windowed(case.hu[z]))
            mask = f"masks/{pid}_{z}.png"
            lesion = case.lesion()[z]
            write_png(root / mask, lesion * mask_value)
            rows.append({"image": image, "mask": mask, "patient": pid, "split": ""})
            exp.add(pid, "", True, z, lesion, windowed_unit(case.hu[z]))
    write_spec(root, intensity="windowed-uint8", lesion_labels=[mask_value], labels={}, spacing_mm=[0.7, 0.8])
    write_manifest(root, rows)
    return exp


def build_medseg(src: Path, *, lesion_labels: tuple[int, ...] = (1, 2), n_z: int = 6, val_z: int = 2) -> Expected:
    """MedSeg #1: tr_im / tr_mask stacks (each z a different patient) + val_im (unlabeled)."""
    tr = [make_case(20 + z, n_z=N_Z) for z in range(n_z)]
    hu = np.stack([c.hu[1 + z % 3] for z, c in enumerate(tr)])
    labels = np.stack([c.labels[1 + z % 3] for z, c in enumerate(tr)])
    write_nifti(src / "tr_im.nii.gz", hu.astype(np.int16))
    write_nifti(src / "tr_mask.nii.gz", labels)
    val = np.stack([make_case(40 + z).hu[2] for z in range(val_z)])
    write_nifti(src / "val_im.nii.gz", val.astype(np.int16))
    exp = Expected(src)
    for z in range(n_z):
        exp.add(f"medseg-z{z:03d}", "", True, z, np.isin(labels[z], lesion_labels).astype(np.uint8), hu_to_unit(hu[z]))
    for z in range(val_z):
        exp.add(f"medseg-val-z{z:03d}", "unlabeled", False, z, np.zeros_like(labels[0]), hu_to_unit(val[z]))
    return exp


def _ma_names(i: int) -> tuple[str, str]:
    """(scan file, mask file) in the Kaggle spelling: the names differ between folders."""
    if i % 2 == 0:
        return f"coronacases_org_{i:03d}.nii.gz", f"coronacases_{i:03d}.nii.gz"
    return f"radiopaedia_org_covid-19-pneumonia-{i}_8590{i}_1-dcm.nii.gz", f"radiopaedia_{i}_8590{i}_1.nii.gz"


def build_covid19_ct_seg(src: Path, *, n_cases: int = 4, combined: bool = False, lungs: bool = True) -> Expected:
    """Ma et al. layout: even cases stored in HU, odd cases windowed to 0..255 (like radiopaedia).

    Rows are expected in scan-file-name order (the importer's order)."""
    exp = Expected(src)
    for i in sorted(range(n_cases), key=lambda k: natural_key(Path(_ma_names(k)[0]))):
        case = make_case(60 + i)
        scan, mask = _ma_names(i)
        stored = case.hu.astype(np.int16) if i % 2 == 0 else windowed(case.hu)
        write_nifti(src / "ct_scans" / scan, stored)
        infection = (case.labels == 1) | (case.labels == 2)
        if combined:
            sides = case.lung + case.lung * (np.arange(SIZE) > SIZE / 2)
            write_nifti(src / "lung_and_infection_mask" / mask, np.where(infection, 3, sides).astype(np.uint8))
        else:
            write_nifti(src / "infection_mask" / mask, infection.astype(np.uint8))
        if lungs:
            write_nifti(src / "lung_mask" / mask, case.lung)
        unit = case.unit() if i % 2 == 0 else windowed_unit(case.hu)
        for z in range(N_Z):
            exp.add(mask.removesuffix(".nii.gz"), "", True, z, infection[z].astype(np.uint8), unit[z])
    return exp


def build_mosmed(
    src: Path, *, labeled: tuple[str, ...] = ("study_0255", "study_0256"), unlabeled: tuple[str, ...] = ("study_0001",)
) -> Expected:
    """MosMedData: studies/CT-0 (unlabeled) and studies/CT-1 (with masks/<study>_mask.nii.gz)."""
    exp = Expected(src)
    entries = [(s, "CT-0", False) for s in unlabeled] + [(s, "CT-1", True) for s in labeled]
    for i, (study, category, has_mask) in enumerate(entries):
        case = make_case(80 + i)
        write_nifti(src / "studies" / category / f"{study}.nii.gz", case.hu.astype(np.int16))
        lesion = (case.labels > 0) & (case.labels < 3)
        if has_mask:
            write_nifti(src / "masks" / f"{study}_mask.nii.gz", lesion.astype(np.uint8))
        for z in range(N_Z):
            exp.add(study, "" if has_mask else "unlabeled", has_mask, z, lesion[z].astype(np.uint8), case.unit()[z])
    return exp


def build_semiseg(src: Path) -> Expected:
    """Inf-Net layout with JPG images of varying size, soft-edged GT, and pseudo-label GT to be ignored."""
    train = src / "TrainingSet" / "LungInfection-Train" / "Doctor-label"
    test = src / "TestingSet" / "LungInfection-Test"
    pseudo = src / "TrainingSet" / "LungInfection-Train" / "Pseudo-label"
    exp = Expected(src)
    for split, folder, names, size in (("train", train, ("3", "17"), SIZE), ("test", test, ("18", "21"), 2 * SIZE)):
        for name in names:
            case = make_case(100 + int(name), size=size)
            img = windowed(case.hu[2])
            write_jpg(folder / "Imgs" / f"{name}.jpg", img)
            lesion = case.lesion()[2]
            soft = (lesion * 200 + 40 * (lesion == 0) * (np.roll(lesion, 1, axis=0) > 0)).astype(np.uint8)
            write_png(folder / "GT" / f"{name}.png", soft)
            exp.add(name, split, True, 0, lesion, None)
    for k, name in enumerate(
        ("Data-1_coronacases_org_001_7", "Data-1_coronacases_org_001_8", "Data-2_radiopaedia_4_1")
    ):
        case = make_case(200 + k)
        write_jpg(pseudo / "Imgs" / f"{name}.jpg", windowed(case.hu[1]))
        write_png(pseudo / "GT" / f"{name}.png", np.full((SIZE, SIZE), 255, np.uint8))
    for patient, z in (
        ("Data-1_coronacases_org_001", 0),
        ("Data-1_coronacases_org_001", 1),
        ("Data-2_radiopaedia_4", 0),
    ):
        exp.add(patient, "unlabeled", False, z, np.zeros((SIZE, SIZE), np.uint8), None)
    return exp


#: (file stem, site, patient) of the pseudo-labeled fixture, in natural file order: two
#: coronacases volumes, a Radiopaedia case, and two Radiopaedia series of another case (one patient).
PSEUDO_SLICES = (
    ("Data-1_coronacases_org_001_7", "coronacases", "Data-1_coronacases_org_001"),
    ("Data-1_coronacases_org_001_8", "coronacases", "Data-1_coronacases_org_001"),
    ("Data-1_coronacases_org_002_3", "coronacases", "Data-1_coronacases_org_002"),
    (
        "Data-1_radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm_2",
        "radiopaedia",
        "Data-1_radiopaedia_org_covid-19-pneumonia-4",
    ),
    (
        "Data-1_radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm_4",
        "radiopaedia",
        "Data-1_radiopaedia_org_covid-19-pneumonia-10",
    ),
    (
        "Data-1_radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm_12",
        "radiopaedia",
        "Data-1_radiopaedia_org_covid-19-pneumonia-10",
    ),
)


def build_semiseg_pseudo(src: Path) -> Expected:
    """The Pseudo-label folder of the Inf-Net layout: JPG slices named by volume, soft-edged
    machine-made GT (lesion = value > 127, edge pixels at 100 must stay background)."""
    pseudo = src / "TrainingSet" / "LungInfection-Train" / "Pseudo-label"
    exp = Expected(src)
    for k, (stem, _site, patient) in enumerate(PSEUDO_SLICES):
        case = make_case(300 + k)
        write_jpg(pseudo / "Imgs" / f"{stem}.jpg", windowed(case.hu[1]))
        lesion = case.lesion()[1]
        edge = (lesion == 0) & (np.roll(lesion, 1, axis=1) > 0)
        write_png(pseudo / "GT" / f"{stem}.png", (lesion * 230 + 100 * edge).astype(np.uint8))
        exp.add(patient, "", True, int(stem.rsplit("_", 1)[1]), lesion, None)
    return exp


def build_msd(src: Path, *, v2: bool = True, n_cases: int = 2, test_cases: int = 1) -> Expected:
    """MSD (v1 names, ``labels`` value->name) or nnU-Net v2 (``_0000`` names, name->value) folder."""
    meta: dict = {"name": "Task99_Toy", "description": "toy lesion task"}
    if v2:
        meta.update(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "ggo": 1, "consolidation": 2},
                "file_ending": ".nii.gz",
            }
        )
    else:
        meta.update({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "ggo", "2": "consolidation"}})
    src.mkdir(parents=True, exist_ok=True)
    (src / "dataset.json").write_text(json.dumps(meta))
    suffix = "_0000" if v2 else ""
    exp = Expected(src)
    for i in range(n_cases):
        case = make_case(300 + i, n_z=3)
        cid = f"toy_{i:03d}"
        write_nifti(src / "imagesTr" / f"{cid}{suffix}.nii.gz", case.hu.astype(np.int16))
        write_nifti(src / "labelsTr" / f"{cid}.nii.gz", case.labels)
        (src / "imagesTr" / f"._{cid}{suffix}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
        for z in range(3):
            exp.add(cid, "", True, z, case.lesion()[z], case.unit()[z])
    for i in range(test_cases):
        case = make_case(400 + i, n_z=3)
        cid = f"toy_{100 + i:03d}"
        write_nifti(src / "imagesTs" / f"{cid}{suffix}.nii.gz", case.hu.astype(np.int16))
        for z in range(3):
            exp.add(cid, "unlabeled", False, z, np.zeros_like(case.labels[z]), case.unit()[z])
    return exp


def build_folder(src: Path, *, outside: Path | None = None) -> Expected:
    """A CSV plus PNG images (windowed) and ``.npy`` HU slices; one row references a file outside SRC."""
    exp = Expected(src)
    rows = []
    for i in range(3):
        case = make_case(500 + i)
        pid = f"pat{i // 2}"
        split = "test" if i == 2 else "train"
        if i == 0:
            image = src / "imgs" / f"s{i}.npy"
            image.parent.mkdir(parents=True, exist_ok=True)
            np.save(image, case.hu[1])
            unit = case.unit()[1]
        else:
            base = outside if (outside is not None and i == 1) else src
            image = write_png(base / "imgs" / f"s{i}.png", windowed(case.hu[1]))
            unit = windowed_unit(case.hu[1])
        mask = write_png(src / "masks" / f"s{i}.png", case.labels[1])
        rows.append(
            {
                "image": str(image.resolve())
                if (outside is not None and i == 1)
                else image.relative_to(src).as_posix(),
                "mask": mask.relative_to(src).as_posix(),
                "patient": pid,
                "split": split,
            }
        )
        exp.add(pid, split, True, sum(1 for p in exp.patients if p == pid), (case.labels[1] > 0).astype(np.uint8), unit)
    with (src / "list.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "mask", "patient", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return exp
