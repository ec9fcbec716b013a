"""COVID-SemiSeg, the Inf-Net layout (2D slices).

``TrainingSet/LungInfection-Train/Doctor-label/{Imgs/*.jpg, GT/*.png}`` -> split "train";
``TestingSet/LungInfection-Test/{Imgs, GT}`` -> split "test";
``TrainingSet/LungInfection-Train/Pseudo-label/Imgs`` -> split "unlabeled". The
``Pseudo-label/GT`` folder holds machine-made pseudo-labels; they are never read.

Images are 8-bit slices of varying size, already windowed: intensity "windowed-uint8"
(the exact window is not published; the lung window maps 0..255 linearly onto [0, 1]).
GT PNGs are binarized while importing (> 127 -> 255), since resampled GT carries
in-between values; lesion label = 255.

Patient ids come from file names: the stem without a trailing ``_<n>``/``-<n>`` slice
number (``Data-1_coronacases_org_001_12`` -> ``Data-1_coronacases_org_001``). The
labeled slices are numbered MedSeg slices (``18.jpg``) of unknown patients, so each is
its own group and the dataset is marked ``patients_known: false``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from fewshot_transfer.data.dataset_format import DatasetSpec, ManifestRow
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers.common import FileSource, ImportOptions, Plan, list_files, slice_group
from fewshot_transfer.data.readers import RASTER_SUFFIXES, read_label

TRAIN = "TrainingSet/LungInfection-Train/Doctor-label"
TEST = "TestingSet/LungInfection-Test"
PSEUDO = "TrainingSet/LungInfection-Train/Pseudo-label/Imgs"
#: The import kind (``ftbench data import semiseg``) and its line in ``--help``.
KIND = "semiseg"
HELP = "COVID-SemiSeg, Inf-Net layout (TrainingSet/, TestingSet/)"
LAYOUT = f"{TRAIN}/{{Imgs,GT}}, {TEST}/{{Imgs,GT}}, {PSEUDO} (the Inf-Net Dataset/ folder)"


def plan(src: Path, options: ImportOptions) -> Plan:
    if not (src / "TrainingSet").is_dir() and (src / "Dataset" / "TrainingSet").is_dir():
        src = src / "Dataset"
    files: dict[str, FileSource] = {}
    rows: list[ManifestRow] = []
    notes: list[str] = []
    for split, folder in (("train", src / TRAIN), ("test", src / TEST)):
        gts = {p.stem: p for p in list_files(folder / "GT", RASTER_SUFFIXES)}
        for img in list_files(folder / "Imgs", RASTER_SUFFIXES):
            image = f"images/{split}/{img.name}"
            files[image] = img
            gt = gts.get(img.stem)
            mask = ""
            if gt is None:
                notes.append(f"{img}: no GT/{img.stem}.png; imported as unlabeled")
            else:
                mask = f"masks/{split}/{img.stem}.png"
                files[mask] = partial(binarize, gt)
            rows.append(
                ManifestRow(image=image, mask=mask, patient=slice_group(img.stem), split=split if mask else "unlabeled")
            )
    for img in list_files(src / PSEUDO, RASTER_SUFFIXES):
        image = f"images/unlabeled/{img.name}"
        files[image] = img
        rows.append(ManifestRow(image=image, patient=slice_group(img.stem), split="unlabeled"))
    if not any(r.mask for r in rows):
        raise DatasetError(f"{src}: no labeled COVID-SemiSeg slices found; expected {LAYOUT}")
    if options.lesion_labels and options.lesion_labels != (255,):
        notes.append("--lesion-labels ignored: COVID-SemiSeg masks are binary (imported as 0/255)")
    counts = {s: sum(1 for r in rows if r.split == s) for s in ("train", "test", "unlabeled")}
    notes.append(
        f"{counts['train']} train, {counts['test']} test, {counts['unlabeled']} unlabeled slices; pseudo-label GT not used"
    )
    spec = DatasetSpec(
        name=options.name or "covid-semiseg",
        intensity="windowed-uint8",
        lesion_labels=(255,),
        labels={255: "infection"},
        patients_known=False,
        description=(
            "COVID-SemiSeg (Inf-Net): 2D slices, doctor-labeled train/test and unlabeled slices; "
            "labeled slices come from unknown patients (each slice is its own group)"
        ),
    )
    return Plan(spec=spec, rows=rows, files=files, notes=notes)


def binarize(src: Path, dest: Path) -> None:
    """GT -> 0/255 PNG (values > 127 are lesion)."""
    from PIL import Image

    labels = read_label(src).data[0]
    Image.fromarray(np.where(labels > 127, 255, 0).astype(np.uint8)).save(dest)
