"""Medical Segmentation Decathlon / nnU-Net raw folders: ``imagesTr/``, ``labelsTr/``, ``dataset.json``.

Both dataset.json flavours are read: MSD / nnU-Net v1 (``"labels": {"0": "background",
"1": "lesion"}``, ``"modality"``) and nnU-Net v2 (``"labels": {"background": 0,
"lesion": 1}``, ``"channel_names"``, ``"file_ending"``). In v2 folders (those with
``channel_names``) image names carry a channel suffix (``case_001_0000.nii.gz``); only
channel 0 is used and it must be CT.
Each case is one patient. ``imagesTs/`` (no labels) becomes unlabeled rows. Lesion
labels default to every non-zero label in dataset.json (``--lesion-labels`` to choose).
macOS ``._*`` files, common in the MSD tarballs, are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from fewshot_transfer.data.dataset_format import DatasetSpec, ManifestRow
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers.common import (
    FileSource,
    ImportOptions,
    Plan,
    list_files,
    nifti_stem,
    require_dir,
)
from fewshot_transfer.data.readers import NIFTI_SUFFIXES

#: The import kind (``ftbench data import msd``) and its line in ``--help``.
KIND = "msd"
HELP = "Medical Segmentation Decathlon / nnU-Net raw (imagesTr/, labelsTr/, dataset.json)"
LAYOUT = "imagesTr/, labelsTr/, dataset.json [+ imagesTs/] (MSD task or nnU-Net raw dataset folder)"


def read_msd_labels(meta: dict, source: Path) -> dict[int, str]:
    """``{value: name}`` from either dataset.json flavour (region lists of nnU-Net v2 are skipped)."""
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f'{source}: no "labels" object; expected e.g. {{"0": "background", "1": "lesion"}}')
    labels: dict[int, str] = {}
    for key, value in raw.items():
        if str(key).lstrip("-").isdigit():
            labels[int(key)] = str(value)
        elif isinstance(value, int):
            labels[value] = str(key)
    if not labels:
        raise DatasetError(
            f'{source}: "labels" has no integer label values ({raw!r}); ftbench needs plain label values'
        )
    return labels


def plan(src: Path, options: ImportOptions) -> Plan:
    meta_path = src / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{src}: no dataset.json; expected {LAYOUT}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{meta_path}: not valid JSON ({err})") from None
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "CT"}
    first = str(channels.get("0", channels.get(0, "CT")))
    if first.upper() != "CT":
        raise DatasetError(f"{meta_path}: channel 0 is {first!r}; ftbench segments CT (choose a CT task)")
    labels = read_msd_labels(meta, meta_path)
    images_tr = require_dir(src / "imagesTr", "imagesTr", LAYOUT)
    require_dir(src / "labelsTr", "labelsTr", LAYOUT)
    v2 = "channel_names" in meta
    images = {_case_id(p, v2): p for p in list_files(images_tr, NIFTI_SUFFIXES) if _channel(p, v2) in ("", "0000")}
    label_files = {nifti_stem(p): p for p in list_files(src / "labelsTr", NIFTI_SUFFIXES)}
    files: dict[str, FileSource] = {}
    rows: list[ManifestRow] = []
    notes: list[str] = []
    for case, img in sorted(images.items()):
        image = f"imagesTr/{img.name}"
        files[image] = img
        mask = ""
        if case in label_files:
            mask = f"labelsTr/{label_files[case].name}"
            files[mask] = label_files[case]
        rows.append(ManifestRow(image=image, mask=mask, patient=case, split="" if mask else "unlabeled"))
    missing = sorted(set(label_files) - set(images))
    if missing:
        notes.append(f"{len(missing)} label file(s) without an image were skipped, e.g. {missing[:3]}")
    for img in list_files(src / "imagesTs", NIFTI_SUFFIXES):
        if _channel(img, v2) in ("", "0000"):
            image = f"imagesTs/{img.name}"
            files[image] = img
            rows.append(ManifestRow(image=image, patient=_case_id(img, v2), split="unlabeled"))
    if not any(r.mask for r in rows):
        raise DatasetError(f"{src}: no image in imagesTr/ has a label in labelsTr/; expected {LAYOUT}")
    lesion = options.lesion_labels or tuple(sorted(v for v in labels if v != 0))
    spec = DatasetSpec(
        name=options.name or str(meta.get("name") or src.name),
        intensity="hu",
        lesion_labels=lesion,
        labels={k: v for k, v in labels.items() if k != 0},
        description=str(meta.get("description") or f"imported from MSD / nnU-Net folder {src.name}"),
    )
    return Plan(spec=spec, rows=rows, files=files, notes=notes)


def _channel(path: Path, v2: bool) -> str:
    """nnU-Net v2 channel suffix ("0000") of an image name; "" for v1 / MSD names."""
    stem = nifti_stem(path)
    if not v2:
        return ""
    tail = stem.rsplit("_", 1)[-1]
    return tail if "_" in stem and len(tail) == 4 and tail.isdigit() else ""


def _case_id(path: Path, v2: bool) -> str:
    stem = nifti_stem(path)
    return stem[:-5] if _channel(path, v2) else stem
