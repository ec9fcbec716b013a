"""MosMedData (COVID19_1110): ``studies/CT-0..CT-4/*.nii.gz`` and ``masks/*_mask.nii.gz``.

A mask belongs to the study of the same name plus ``_mask`` (``study_0255.nii.gz`` ->
``study_0255_mask.nii.gz``); about 50 studies have one. Studies without a mask become
unlabeled rows (split "unlabeled"); pass ``--labeled-only`` to skip them — decoding all
~1,100 studies takes a while. The study name is the patient id. Volumes are HU.
"""

from __future__ import annotations

from pathlib import Path

from fewshot_transfer.data.dataset_format import DatasetSpec, ManifestRow
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers.common import FileSource, ImportOptions, Plan, list_files, nifti_stem
from fewshot_transfer.data.readers import NIFTI_SUFFIXES

#: The import kind (``ftbench data import mosmed``) and its line in ``--help``.
KIND = "mosmed"
HELP = "MosMedData (studies/CT-*/, masks/*_mask.nii.gz)"
LAYOUT = "studies/CT-*/<study>.nii.gz + masks/<study>_mask.nii.gz"


def plan(src: Path, options: ImportOptions) -> Plan:
    categories = sorted(p for p in (src / "studies").glob("CT-*") if p.is_dir())
    studies = [s for cat in categories for s in list_files(cat, NIFTI_SUFFIXES)]
    if not studies:
        raise DatasetError(f"{src}: no studies found under studies/CT-*/; expected {LAYOUT}")
    masks = {nifti_stem(m).removesuffix("_mask"): m for m in list_files(src / "masks", NIFTI_SUFFIXES)}
    files: dict[str, FileSource] = {}
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for study in studies:
        stem = nifti_stem(study)
        if stem in seen:
            raise DatasetError(f"{study}: study name {stem!r} appears in two CT-* folders; rename one")
        seen.add(stem)
        image = f"images/{study.parent.name}/{study.name}"
        files[image] = study
        mask = ""
        if stem in masks:
            mask = f"masks/{masks[stem].name}"
            files[mask] = masks[stem]
        rows.append(ManifestRow(image=image, mask=mask, patient=stem, split="" if mask else "unlabeled"))
    notes = []
    orphans = sorted(set(masks) - seen)
    if orphans:
        notes.append(f"{len(orphans)} mask(s) without a study were skipped, e.g. {orphans[:3]}")
    labeled = sum(1 for r in rows if r.mask)
    notes.append(f"{labeled} labeled and {len(rows) - labeled} unlabeled studies")
    spec = DatasetSpec(
        name=options.name or "mosmed",
        intensity="hu",
        lesion_labels=options.lesion_labels or (1,),
        labels={1: "ground-glass opacity / consolidation"},
        description="MosMedData COVID19_1110 chest CT (Moscow); ~50 studies with lesion masks",
    )
    return Plan(spec=spec, rows=rows, files=files, notes=notes)
