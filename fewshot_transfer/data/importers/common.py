"""What every importer shares: the plan it returns, file placement and small helpers.

An importer only *plans*: it reads the public layout in place and returns a
:class:`Plan` (dataset.json, manifest rows, and for every destination file either the
source file to place or a function that writes a converted file). The driver in
:mod:`fewshot_transfer.data.importers` then builds the folder atomically and places
only the files the kept rows reference.

Placement: files are **hard-linked** into the new folder when source and destination
share a filesystem (instant, no extra disk space; the manifest then points inside the
folder, which the loader requires), and copied otherwise or with ``copy=True``.
Symbolic links are not used: the loader resolves paths and refuses any that leave the
dataset folder. A hard link shares the source file's size and mtime, so editing the
original still invalidates the cache.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fewshot_transfer.data.dataset_format import DatasetSpec, ManifestRow
from fewshot_transfer.data.errors import DatasetError

log = logging.getLogger(__name__)

#: A destination file is either a source file to link/copy or a function writing it.
FileSource = Path | Callable[[Path], None]


@dataclass(frozen=True)
class ImportOptions:
    """User choices shared by all importers (None: the importer's default)."""

    lesion_labels: tuple[int, ...] | None = None
    name: str | None = None


@dataclass
class Plan:
    """What an importer found: the dataset description, rows and destination files."""

    spec: DatasetSpec
    rows: list[ManifestRow]
    files: dict[str, FileSource] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def place_file(src: Path, dest: Path, *, copy: bool = False) -> str:
    """Hard-link ``src`` to ``dest`` (copy when linking fails or ``copy``); returns "link" or "copy"."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dest)
            return "link"
        except OSError:
            pass
    shutil.copy2(src, dest)
    return "copy"


def nifti_stem(path: Path | str) -> str:
    """File name without ``.nii.gz`` / ``.nii``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def natural_key(path: Path) -> list:
    """Sort key ordering ``2.jpg`` before ``10.jpg`` (slice numbers in file names)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files in ``folder`` ending in one of ``suffixes``, in natural order; hidden / ``._`` files skipped."""
    if not folder.is_dir():
        return []
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(suffixes)
        ),
        key=natural_key,
    )


def detect_intensity(values: np.ndarray) -> str:
    """ "windowed-uint8" when every value lies in 0..255, else "hu" (CT in HU always has air < 0)."""
    if values.size and float(values.min()) >= 0.0 and float(values.max()) <= 255.0:
        return "windowed-uint8"
    return "hu"


def majority_intensity(rows: list[ManifestRow]) -> tuple[str, list[ManifestRow]]:
    """Pick the most common per-row intensity as the dataset's; keep the column only where rows differ."""
    counts = Counter(r.intensity for r in rows if r.intensity)
    if not counts:
        return "hu", rows
    main = counts.most_common(1)[0][0]
    return main, [replace(r, intensity="" if r.intensity == main else r.intensity) for r in rows]


def slice_group(stem: str) -> str:
    """Patient id from a 2D slice file name: the stem without a trailing ``_123`` / ``-123`` slice number.

    ``Data-1_coronacases_org_001_12`` -> ``Data-1_coronacases_org_001``; ``18`` -> ``18``.
    """
    match = re.match(r"^(.+?)[_-]\d+$", stem)
    return match.group(1) if match else stem


def parse_label_list(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> (1, 2), with a clear error for anything else."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise DatasetError(f"--lesion-labels {text!r} is not a comma-separated list of integers, e.g. 1,2") from None
    if not values or 0 in values:
        raise DatasetError(f"--lesion-labels {text!r} must list non-zero mask values, e.g. 1,2")
    return values


def require_dir(path: Path, what: str, expected: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found; expected the layout {expected}")
    return path
