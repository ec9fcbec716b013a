"""COVID-19-CT-Seg (Ma et al., 20 cases; zenodo.org/record/3757476).

Layout: ``ct_scans/*.nii(.gz)`` with masks in ``infection_mask/`` (infection = 1), or
only ``lung_and_infection_mask/`` (1 left lung, 2 right lung, 3 infection; lesion = 3);
optional ``lung_mask/`` becomes the ``lung`` column when every case has one.

Case names differ between folders in the Kaggle re-upload
(``coronacases_org_001.nii`` vs ``coronacases_001.nii``,
``radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm.nii`` vs ``radiopaedia_10_85902_1.nii``);
:func:`case_key` maps both spellings to one key, which is also the patient id.

Intensity: the 10 coronacases volumes are HU, the 10 radiopaedia volumes were windowed
to [-1250, 250] and stored as 0..255. Each volume is inspected and the manifest gets a
per-row ``intensity`` wherever it differs from the majority, so both normalize to the
same scale.
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
    require_dir,
)
from fewshot_transfer.data.readers import NIFTI_SUFFIXES, read_image

#: The import kind (``ftbench data import covid19-ct-seg``) and its line in ``--help``.
KIND = "covid19-ct-seg"
HELP = "COVID-19-CT-Seg, Ma et al. 20 cases (ct_scans/, infection_mask/)"
LAYOUT = "ct_scans/*.nii(.gz) + infection_mask/ (or lung_and_infection_mask/, infection = 3) [+ lung_mask/]"


def case_key(path: Path | str) -> str:
    """One spelling of a case name for scans and masks: ``coronacases_001``, ``radiopaedia_10_85902_1``."""
    stem = nifti_stem(path)
    stem = stem.replace("_org_covid-19-pneumonia-", "_").replace("_org_", "_")
    return stem.removesuffix("-dcm")


def plan(src: Path, options: ImportOptions) -> Plan:
    scans = list_files(require_dir(src / "ct_scans", "ct_scans", LAYOUT), NIFTI_SUFFIXES)
    if not scans:
        raise DatasetError(f"{src / 'ct_scans'}: no .nii / .nii.gz scans; expected {LAYOUT}")
    if (src / "infection_mask").is_dir():
        mask_dir, lesion_default = src / "infection_mask", (1,)
        labels = {1: "infection"}
    elif (src / "lung_and_infection_mask").is_dir():
        mask_dir, lesion_default = src / "lung_and_infection_mask", (3,)
        labels = {1: "left lung", 2: "right lung", 3: "infection"}
    else:
        raise DatasetError(f"{src}: neither infection_mask/ nor lung_and_infection_mask/ found; expected {LAYOUT}")
    masks = {case_key(p): p for p in list_files(mask_dir, NIFTI_SUFFIXES)}
    lungs = {case_key(p): p for p in list_files(src / "lung_mask", NIFTI_SUFFIXES)}
    use_lungs = bool(lungs) and all(case_key(s) in lungs for s in scans)
    files: dict[str, FileSource] = {}
    rows: list[ManifestRow] = []
    notes: list[str] = []
    for scan in scans:
        key = case_key(scan)
        image = f"images/{scan.name}"
        files[image] = scan
        mask = ""
        if key in masks:
            mask = f"masks/{masks[key].name}"
            files[mask] = masks[key]
        else:
            notes.append(f"{scan.name}: no mask in {mask_dir.name}/; imported as unlabeled")
        lung = ""
        if use_lungs:
            lung = f"lungs/{lungs[key].name}"
            files[lung] = lungs[key]
        intensity = detect_intensity(read_image(scan).data)
        rows.append(
            ManifestRow(
                image=image,
                mask=mask,
                patient=key,
                split="" if mask else "unlabeled",
                lung=lung,
                intensity=intensity,
            )
        )
    windowed = sum(1 for r in rows if r.intensity == "windowed-uint8")
    notes.append(f"{windowed} of {len(rows)} scans stored windowed 0..255, the rest in HU")
    intensity, rows = majority_intensity(rows)
    spec = DatasetSpec(
        name=options.name or "covid19-ct-seg",
        intensity=intensity,
        lesion_labels=options.lesion_labels or lesion_default,
        labels=labels,
        description=(
            "COVID-19 CT Lung and Infection Segmentation Dataset (Ma et al. 2020, 20 cases); "
            f"masks from {mask_dir.name}/; per-row intensity where scans were stored windowed 0..255"
        ),
    )
    return Plan(spec=spec, rows=rows, files=files, notes=notes)
