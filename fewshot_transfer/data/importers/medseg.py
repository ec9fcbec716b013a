"""MedSeg COVID-19 CT segmentation datasets (medicalsegmentation.com/covid19).

Dataset #1 is ``tr_im.nii.gz`` / ``tr_mask.nii.gz``: 100 axial slices stacked along z,
but each z is a slice from a different scan (~40 patients, which slice belongs to whom
is not published). Each z therefore becomes its own patient group ``medseg-z042`` and
the dataset is marked ``patients_known: false`` — patient-disjoint splits cannot be
guaranteed, and ``ftbench data info`` says so. ``val_im.nii.gz`` (no masks) becomes
unlabeled rows ``medseg-val-z003``.

Dataset #2 (optional, same folder or alone): ``rp_im/*.nii.gz`` volumes with masks in
``rp_msk/`` and lung masks in ``rp_lung_msk/``; each volume is one patient
``medseg2-<name>``.

Labels: 1 ground-glass opacity, 2 consolidation, 3 pleural effusion. Lesion = 1, 2 by
default (``--lesion-labels``); the rest stay declared, non-lesion labels. Intensity is
detected per file (HU or 0..255).
"""

from __future__ import annotations

from pathlib import Path

from fewshot_transfer.data.dataset_format import DatasetSpec, ManifestRow
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers.common import (
    FileSource,
    ImportOptions,
    Plan,
    detect_intensity,
    list_files,
    majority_intensity,
    nifti_stem,
)
from fewshot_transfer.data.readers import NIFTI_SUFFIXES, read_image

#: The import kind (``ftbench data import medseg``) and its line in ``--help``.
KIND = "medseg"
HELP = "MedSeg COVID-19 #1 (tr_im/tr_mask/val_im.nii.gz) and/or #2 (rp_im/, rp_msk/)"
LAYOUT = "tr_im.nii.gz + tr_mask.nii.gz (+ val_im.nii.gz) for MedSeg #1, and/or rp_im/, rp_msk/ (+ rp_lung_msk/) for MedSeg #2"
LABELS = {1: "ground-glass opacity", 2: "consolidation", 3: "pleural effusion"}


def plan(src: Path, options: ImportOptions) -> Plan:
    rows: list[ManifestRow] = []
    files: dict[str, FileSource] = {}
    notes: list[str] = []
    tr_im, tr_mask, val_im = (_find(src, stem) for stem in ("tr_im", "tr_mask", "val_im"))
    if tr_im is not None:
        if tr_mask is None:
            raise DatasetError(f"{src}: found {tr_im.name} but no tr_mask.nii.gz next to it; expected {LAYOUT}")
        image, mask = f"images/{tr_im.name}", f"masks/{tr_mask.name}"
        files[image], files[mask] = tr_im, tr_mask
        raw = read_image(tr_im)
        intensity = detect_intensity(raw.data)
        rows += [
            ManifestRow(image=image, mask=mask, patient=f"medseg-z{z:03d}", slice=z, intensity=intensity)
            for z in range(raw.data.shape[0])
        ]
        notes.append(
            f"{tr_im.name}: {raw.data.shape[0]} slices from unknown patients; each slice is its own patient group"
        )
        if val_im is not None:
            image = f"images/{val_im.name}"
            files[image] = val_im
            raw = read_image(val_im)
            intensity = detect_intensity(raw.data)
            rows += [
                ManifestRow(
                    image=image, patient=f"medseg-val-z{z:03d}", split="unlabeled", slice=z, intensity=intensity
                )
                for z in range(raw.data.shape[0])
            ]
    volumes = list_files(src / "rp_im", NIFTI_SUFFIXES)
    lungs_everywhere = tr_im is None and all((src / "rp_lung_msk" / v.name).is_file() for v in volumes)
    for vol in volumes:
        image = f"images/rp_im/{vol.name}"
        files[image] = vol
        mask_src = src / "rp_msk" / vol.name
        mask = ""
        if mask_src.is_file():
            mask = f"masks/rp_msk/{vol.name}"
            files[mask] = mask_src
        lung = ""
        if lungs_everywhere:
            lung = f"lungs/rp_lung_msk/{vol.name}"
            files[lung] = src / "rp_lung_msk" / vol.name
        rows.append(
            ManifestRow(
                image=image,
                mask=mask,
                patient=f"medseg2-{nifti_stem(vol)}",
                split="" if mask else "unlabeled",
                lung=lung,
                intensity=detect_intensity(read_image(vol).data),
            )
        )
    if not rows:
        raise DatasetError(f"{src}: no MedSeg files found; expected {LAYOUT}")
    intensity, rows = majority_intensity(rows)
    lesion = options.lesion_labels or (1, 2)
    spec = DatasetSpec(
        name=options.name or "medseg-covid19",
        intensity=intensity,
        lesion_labels=lesion,
        labels=dict(LABELS),
        patients_known=tr_im is None,
        description=(
            "MedSeg COVID-19 CT segmentation (medicalsegmentation.com/covid19); lesion labels "
            f"{', '.join(LABELS.get(v, str(v)) for v in lesion)}. "
            + (
                "Dataset #1 slices come from ~40 unknown patients: each slice is its own patient group."
                if tr_im
                else ""
            )
        ).strip(),
    )
    return Plan(spec=spec, rows=rows, files=files, notes=notes)


def _find(src: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES[::-1]:
        path = src / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None
