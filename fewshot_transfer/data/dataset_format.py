"""The on-disk dataset format: ``dataset.json`` + ``manifest.csv`` in one folder.

A dataset folder is self-describing, in the spirit of nnU-Net's ``dataset.json``:

``dataset.json``
    ``name``; ``modality`` ("CT"); ``intensity``: "hu" or "windowed-uint8";
    ``window``: [lo, hi] HU that 0..255 maps to for windowed-uint8 (default [-1250, 250]);
    ``lesion_labels``: mask values that count as lesion (e.g. [1], [1, 2], [255]);
    ``labels``: optional {value: name} of every known mask value; ``other_labels``
    (alias ``ignore_labels``): optional known non-lesion values (e.g. 3 = pleural effusion);
    ``spacing_mm``: [row, col] for files that carry no spacing themselves (2D images), or
    null; ``patients_known``: false when patient ids are stand-ins (e.g. one per slice);
    ``label_origin``: "manual" (default: drawn by people) or "model" (machine-made labels,
    e.g. published pseudo-labels: a source with label noise, stated in every leaderboard
    that trains on it); optional ``description``.

``manifest.csv``
    Columns ``image,mask,patient,split,slice`` (``image``, ``mask`` and ``patient`` are
    required; ``split`` and ``slice`` may be absent) plus optional ``lung`` (lung-mask
    path), ``intensity`` (per-row override of dataset.json, for collections that mix
    conventions) and ``site`` (the hospital / collection a row comes from, for collections
    pooled from several sites; ``ftbench data import --site`` keeps one). Paths are relative to the folder and must stay inside it. An empty
    ``mask`` means unlabeled. ``split`` is "train", "test", "unlabeled" or "" (no official
    split). For a volume, an empty ``slice`` means every z slice, an integer one z index;
    for a 2D file ``slice`` only records the slice's original index.

Mask values other than 0, ``lesion_labels``, ``labels`` and ``other_labels`` are an
error: an unknown value usually means the wrong label convention was declared.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import stat as stat_module
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.slices import LUNG_WINDOW

log = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
MANIFEST_CSV = "manifest.csv"
INTENSITIES = ("hu", "windowed-uint8")
SPLITS = ("train", "test", "unlabeled", "")
REQUIRED_COLUMNS = ("image", "mask", "patient")
MANIFEST_COLUMNS = ("image", "mask", "patient", "split", "slice")
OPTIONAL_COLUMNS = ("lung", "intensity", "site")
LABEL_ORIGINS = ("manual", "model")

_FORMAT_HELP = "see the module docstring of fewshot_transfer.data.dataset_format or `ftbench data import --help`"


@dataclass(frozen=True)
class DatasetSpec:
    """The parsed ``dataset.json``."""

    name: str
    intensity: str
    lesion_labels: tuple[int, ...]
    window: tuple[float, float] = LUNG_WINDOW
    labels: dict[int, str] = field(default_factory=dict)
    other_labels: tuple[int, ...] = ()
    spacing_mm: tuple[float, float] | None = None
    modality: str = "CT"
    description: str = ""
    patients_known: bool = True
    label_origin: str = "manual"

    def allowed_mask_values(self) -> frozenset[int]:
        """Every mask value that is known: background, lesion and declared non-lesion labels."""
        return frozenset({0, *self.lesion_labels, *self.labels, *self.other_labels})

    def to_json(self) -> dict:
        """The ``dataset.json`` object (label keys as strings, as JSON requires)."""
        out: dict = {
            "name": self.name,
            "modality": self.modality,
            "intensity": self.intensity,
            "window": list(self.window),
            "lesion_labels": list(self.lesion_labels),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "other_labels": list(self.other_labels),
            "spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "patients_known": self.patients_known,
        }
        if self.label_origin != "manual":
            out["label_origin"] = self.label_origin
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_json(
        cls, data: object, *, source: Path | str = DATASET_JSON, default_name: str = "dataset"
    ) -> DatasetSpec:
        """Validate a parsed ``dataset.json``; ``source`` names the file in error messages."""
        if not isinstance(data, dict):
            raise DatasetError(f"{source}: must hold a JSON object, got {type(data).__name__}; {_FORMAT_HELP}")
        intensity = data.get("intensity")
        if intensity not in INTENSITIES:
            raise DatasetError(
                f'{source}: "intensity" is {intensity!r}; set it to "hu" (values in Hounsfield units) '
                f'or "windowed-uint8" (values 0..255 windowed from HU by "window")'
            )
        lesion = _int_list(data.get("lesion_labels"), "lesion_labels", source)
        if not lesion:
            raise DatasetError(
                f'{source}: "lesion_labels" is missing or empty; list the mask values that are lesion, e.g. [1]'
            )
        if 0 in lesion:
            raise DatasetError(f'{source}: "lesion_labels" contains 0, which is background; remove it')
        window = data.get("window", list(LUNG_WINDOW))
        if (
            not isinstance(window, (list, tuple))
            or len(window) != 2
            or not all(_is_number(v) for v in window)
            or not float(window[0]) < float(window[1])
        ):
            raise DatasetError(f'{source}: "window" is {window!r}; give [lo, hi] in HU with lo < hi, e.g. [-1250, 250]')
        labels_raw = data.get("labels") or {}
        if not isinstance(labels_raw, dict):
            raise DatasetError(
                f'{source}: "labels" must map mask values to names, e.g. {{"1": "GGO"}}; got {labels_raw!r}'
            )
        labels: dict[int, str] = {}
        for key, value in labels_raw.items():
            try:
                labels[int(key)] = str(value)
            except (TypeError, ValueError):
                raise DatasetError(
                    f'{source}: "labels" key {key!r} is not an integer mask value; write it as {{"1": "GGO"}}'
                ) from None
        other = _int_list(data.get("other_labels", []), "other_labels", source)
        other += _int_list(data.get("ignore_labels", []), "ignore_labels", source)
        spacing = data.get("spacing_mm")
        if spacing is not None:
            if (
                not isinstance(spacing, (list, tuple))
                or len(spacing) != 2
                or not all(_is_number(v) and float(v) > 0 for v in spacing)
            ):
                raise DatasetError(f'{source}: "spacing_mm" is {spacing!r}; give [row, col] in mm (positive) or null')
            spacing = (float(spacing[0]), float(spacing[1]))
        label_origin = data.get("label_origin", "manual")
        if label_origin not in LABEL_ORIGINS:
            raise DatasetError(
                f'{source}: "label_origin" is {label_origin!r}; set it to "manual" (labels drawn by people) '
                f'or "model" (labels made by a model, e.g. published pseudo-labels)'
            )
        modality = str(data.get("modality", "CT"))
        if modality.upper() != "CT":
            log.warning("%s: modality is %r; ftbench's intensity handling assumes CT", source, modality)
        return cls(
            name=str(data.get("name") or default_name),
            intensity=intensity,
            lesion_labels=tuple(lesion),
            window=(float(window[0]), float(window[1])),
            labels=labels,
            other_labels=tuple(sorted(set(other))),
            spacing_mm=spacing,
            modality=modality,
            description=str(data.get("description", "")),
            patients_known=bool(data.get("patients_known", True)),
            label_origin=label_origin,
        )


@dataclass(frozen=True)
class ManifestRow:
    """One row of ``manifest.csv``; ``line`` is its CSV line number, for messages."""

    image: str
    mask: str = ""
    patient: str = ""
    split: str = ""
    slice: int | None = None
    lung: str = ""
    intensity: str = ""
    site: str = ""
    line: int = field(default=0, compare=False)

    @property
    def labeled(self) -> bool:
        return bool(self.mask)


def read_spec(root: Path | str) -> DatasetSpec:
    """Read and validate ``root/dataset.json``."""
    root = Path(root)
    path = root / DATASET_JSON
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist (or is not a folder); check the path")
    if not path.is_file():
        raise DatasetError(
            f"{root}: no {DATASET_JSON}; a dataset folder needs {DATASET_JSON} and {MANIFEST_CSV}. "
            f"Convert a public layout with `ftbench data import`, or see `ftbench data phantom` for an example"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err}); fix the file") from None
    return DatasetSpec.from_json(data, source=path, default_name=root.name)


def read_manifest(root: Path | str) -> list[ManifestRow]:
    """Read and validate ``root/manifest.csv`` (columns, values, duplicates; not the files)."""
    path = Path(root) / MANIFEST_CSV
    if not path.is_file():
        raise DatasetError(
            f"{Path(root)}: no {MANIFEST_CSV}; list one image per row with columns "
            f"{','.join(MANIFEST_COLUMNS)} ({_FORMAT_HELP})"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err}); save it as UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'}); "
            f"the header must be {','.join(MANIFEST_COLUMNS)}"
        )
    rows: list[ManifestRow] = []
    seen: dict[tuple[str, int | None], int] = {}
    for raw in reader:
        n = reader.line_num
        rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if not isinstance(v, list)}
        if not any(rec.values()):
            continue
        row = _parse_row(rec, n, path)
        key = (row.image, row.slice)
        if key in seen:
            raise DatasetError(
                f"{path}: line {n} repeats image {row.image!r} (slice {'all' if row.slice is None else row.slice}) "
                f"already listed on line {seen[key]}; each slice may appear once"
            )
        seen[key] = n
        rows.append(row)
    _check_whole_volume_overlap(rows, path)
    if not rows:
        raise DatasetError(f"{path}: the manifest lists no images; add one row per image (or volume)")
    return rows


def check_files(root: Path | str, rows: list[ManifestRow]) -> dict[str, os.stat_result]:
    """``stat`` of every file the manifest references, keyed by its manifest path.

    Refuses absolute paths, paths that resolve (symlinks included) outside ``root`` and
    missing files. Each parent folder is resolved once, so a manifest of thousands of
    slices costs about one ``lstat`` per file — this runs on every (cached) load.
    """
    root = Path(root)
    root_real = os.path.realpath(root)
    parents: dict[str, str] = {}
    stats: dict[str, os.stat_result] = {}
    for row in rows:
        for what, rel in (("image", row.image), ("mask", row.mask), ("lung", row.lung)):
            if rel and rel not in stats:
                stats[rel] = _stat_inside(root, root_real, rel, what, row.line, parents)[1]
    return stats


def read_dataset(root: Path | str) -> tuple[DatasetSpec, list[ManifestRow]]:
    """Read and validate both files of a dataset folder, including that every referenced file exists."""
    root = Path(root)
    spec = read_spec(root)
    rows = read_manifest(root)
    check_files(root, rows)
    return spec, rows


def _stat_inside(
    root: Path, root_real: str, rel: str, what: str, line: int, parents: dict[str, str]
) -> tuple[str, os.stat_result]:
    where = f"{root / MANIFEST_CSV}: line {line}: {what}"
    if os.path.isabs(rel):
        raise DatasetError(
            f"{where} path {rel!r} is absolute; paths must be relative to {root} (copy or link the file into the dataset folder)"
        )
    head, name = os.path.split(rel)
    parent = parents.get(head)
    if parent is None:
        parent = parents[head] = os.path.realpath(os.path.join(root, head))
    path = os.path.join(parent, name)
    try:
        st = os.lstat(path)
        if stat_module.S_ISLNK(st.st_mode):
            path = os.path.realpath(path)
            st = os.stat(path)
    except OSError:
        st = None
    if not (path == root_real or path.startswith(root_real + os.sep)):
        raise DatasetError(
            f"{where} path {rel!r} points outside the dataset folder {root}; "
            f"copy or hard-link the file into the folder and reference it there"
        )
    if st is None or not stat_module.S_ISREG(st.st_mode):
        raise DatasetError(f"{where} file {root / rel} does not exist; fix the path or add the file")
    return path, st


def write_spec(root: Path | str, spec: DatasetSpec) -> Path:
    """Write ``root/dataset.json``."""
    path = Path(root) / DATASET_JSON
    path.write_text(json.dumps(spec.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def write_manifest(root: Path | str, rows: list[ManifestRow]) -> Path:
    """Write ``root/manifest.csv``; ``lung`` / ``intensity`` columns only when some row uses them."""
    columns = list(MANIFEST_COLUMNS) + [c for c in OPTIONAL_COLUMNS if any(getattr(r, c) for r in rows)]
    path = Path(root) / MANIFEST_CSV
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            values = {
                "image": row.image,
                "mask": row.mask,
                "patient": row.patient,
                "split": row.split,
                "slice": "" if row.slice is None else str(row.slice),
                "lung": row.lung,
                "intensity": row.intensity,
                "site": row.site,
            }
            writer.writerow([values[c] for c in columns])
    return path


@contextmanager
def atomic_dir(out_dir: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to fill; rename it into place only on success.

    Readers never see a half-written dataset, and a failure (or Ctrl-C) leaves nothing
    behind. An existing non-empty ``out_dir`` is an error unless ``overwrite``; one that
    appears while writing (another process) makes the final rename fail with OSError.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"output {out} exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DatasetError(
            f"output folder {out} already exists and is not empty; choose another folder or overwrite it (--force)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)
        yield tmp
        if out.exists() and overwrite:
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _parse_row(rec: dict[str, str], line: int, path: Path) -> ManifestRow:
    image = rec.get("image", "")
    if not image:
        raise DatasetError(f"{path}: line {line}: empty image path; every row needs an image")
    patient = rec.get("patient", "")
    if not patient:
        raise DatasetError(
            f"{path}: line {line}: empty patient id for {image!r}; give every row a patient (the split unit)"
        )
    split = rec.get("split", "").lower()
    if split not in SPLITS:
        raise DatasetError(
            f"{path}: line {line}: split {rec.get('split')!r} is not one of "
            f'{", ".join(repr(s) for s in SPLITS)}; use "" when the dataset has no official split'
        )
    slice_text = rec.get("slice", "")
    z: int | None = None
    if slice_text:
        try:
            z = int(slice_text)
        except ValueError:
            raise DatasetError(
                f"{path}: line {line}: slice {slice_text!r} is not an integer; leave it empty for all slices"
            ) from None
        if z < 0:
            raise DatasetError(f"{path}: line {line}: slice {z} is negative; z indices start at 0")
    intensity = rec.get("intensity", "")
    if intensity and intensity not in INTENSITIES:
        raise DatasetError(
            f'{path}: line {line}: intensity {intensity!r} is not "hu" or "windowed-uint8"; '
            f"leave it empty to use dataset.json's"
        )
    return ManifestRow(
        image=image,
        mask=rec.get("mask", ""),
        patient=patient,
        split=split,
        slice=z,
        lung=rec.get("lung", ""),
        intensity=intensity,
        site=rec.get("site", ""),
        line=line,
    )


def _check_whole_volume_overlap(rows: list[ManifestRow], path: Path) -> None:
    """A whole-volume row and a single-slice row of the same file would duplicate a slice."""
    whole = {r.image: r.line for r in rows if r.slice is None}
    for row in rows:
        if row.slice is not None and row.image in whole:
            raise DatasetError(
                f"{path}: line {row.line} lists slice {row.slice} of {row.image!r}, which line {whole[row.image]} "
                f"already includes whole (empty slice); keep one of the two"
            )


def _int_list(value: object, key: str, source: Path | str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise DatasetError(f'{source}: "{key}" must be a list of integer mask values, e.g. [1, 2]; got {value!r}')
    return list(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
