"""Any folder of images and masks listed in a CSV with columns ``image,mask,patient[,split]``.

``SRC`` is the CSV file, or a folder holding exactly one ``.csv``. Paths in it are
relative to the CSV's folder (absolute paths are accepted too); an empty ``mask`` means
unlabeled. Optional ``slice`` and ``lung`` columns are passed through. Any file type the
loader reads works (NIfTI, PNG/JPG, ``.npy``).

Intensity is detected per image (all values in 0..255 -> "windowed-uint8", else "hu").
Lesion labels default to every non-zero value found in the masks; with
``--lesion-labels``, the other values found are declared as non-lesion labels.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from fewshot_transfer.data.dataset_format import SPLITS, DatasetSpec, ManifestRow
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers.common import (
    FileSource,
    ImportOptions,
    Plan,
    detect_intensity,
    majority_intensity,
)
from fewshot_transfer.data.readers import file_kind, read_image, read_label

#: The import kind (``ftbench data import folder``) and its line in ``--help``.
KIND = "folder"
HELP = "any images + masks listed in a CSV with columns image,mask,patient[,split]"
LAYOUT = "a CSV with columns image,mask,patient[,split] (paths relative to the CSV) plus the files it lists"
REQUIRED = ("image", "mask", "patient")


def plan(src: Path, options: ImportOptions) -> Plan:
    table = _find_csv(src)
    base = table.parent
    with table.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise DatasetError(f"{table}: missing column(s) {', '.join(missing)}; expected {LAYOUT}")
        records = [
            (reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in r.items() if not isinstance(v, list)})
            for r in reader
        ]
    files: dict[str, FileSource] = {}
    rows: list[ManifestRow] = []
    found: set[int] = set()
    mask_values: dict[str, set[int]] = {}
    intensities: dict[str, str] = {}
    for line, rec in records:
        if not any(rec.values()):
            continue
        if not rec.get("image") or not rec.get("patient"):
            raise DatasetError(f"{table}: line {line}: image and patient must not be empty")
        split = rec.get("split", "").lower()
        if split not in SPLITS:
            raise DatasetError(f"{table}: line {line}: split {split!r} is not one of {SPLITS}")
        placed: dict[str, str] = {}
        for col in ("image", "mask", "lung"):
            if rec.get(col):
                source = _source(base, rec[col], table, line)
                file_kind(source)
                dest = _dest(base, source)
                files[dest] = source
                placed[col] = dest
        if "mask" in placed and placed["mask"] not in mask_values:
            mask_values[placed["mask"]] = {int(v) for v in np.unique(read_label(files[placed["mask"]]).data)}
            found |= mask_values[placed["mask"]]
        if placed["image"] not in intensities:
            intensities[placed["image"]] = detect_intensity(read_image(files[placed["image"]]).data)
        slice_text = rec.get("slice", "")
        if slice_text and not slice_text.isdigit():
            raise DatasetError(f"{table}: line {line}: slice {slice_text!r} is not a non-negative integer")
        rows.append(
            ManifestRow(
                image=placed["image"],
                mask=placed.get("mask", ""),
                patient=rec["patient"],
                split=split,
                slice=int(slice_text) if slice_text.isdigit() else None,
                lung=placed.get("lung", ""),
                intensity=intensities[placed["image"]],
            )
        )
    if not rows:
        raise DatasetError(f"{table}: no rows; expected {LAYOUT}")
    found.discard(0)
    lesion = options.lesion_labels or tuple(sorted(found))
    if not lesion:
        raise DatasetError(
            f"{table}: the masks hold no non-zero value; pass --lesion-labels to say which values are lesion"
        )
    notes = []
    others = sorted(found - set(lesion))
    if others:
        notes.append(f"mask values {others} are not lesion (declared as other labels)")
    intensity, rows = majority_intensity(rows)
    spec = DatasetSpec(
        name=options.name or base.name,
        intensity=intensity,
        lesion_labels=lesion,
        labels={v: ("lesion" if v in lesion else f"label {v}") for v in sorted(found | set(lesion))},
        description=f"imported from {table.name}",
    )
    return Plan(spec=spec, rows=rows, files=files, notes=notes)


def _find_csv(src: Path) -> Path:
    if src.is_file():
        return src
    tables = sorted(src.glob("*.csv"))
    if len(tables) != 1:
        raise DatasetError(
            f"{src}: found {len(tables)} CSV files ({', '.join(t.name for t in tables) or 'none'}); "
            f"pass the CSV itself as SRC"
        )
    return tables[0]


def _source(base: Path, text: str, table: Path, line: int) -> Path:
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise DatasetError(f"{table}: line {line}: file {path} does not exist; fix the path (relative to {base})")
    return path


def _dest(base: Path, source: Path) -> str:
    """Destination inside the new dataset: the same relative path as under the CSV folder;
    files from elsewhere go to ``external/<hash of their path>/<name>``."""
    try:
        return source.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        tag = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]
        return f"external/{tag}/{source.name}"
