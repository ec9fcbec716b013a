"""Phantom volumes -> a dataset folder of NIfTI files (the format real datasets use).

Exporting phantoms instead of handing their arrays to the harness directly means the
default benchmark runs through the same NIfTI reader, normalization and cache as a real
dataset, and a phantom domain can be inspected with any NIfTI viewer.

Storage follows the scanner profile's intensity convention: "hu" volumes as int16 HU
(rounded: at most 0.5 HU error), "windowed-uint8" volumes clipped to the lung window and
scaled to 0..255 as uint8 (at most 1/510 of the window). Masks and lung masks are uint8.
Slices are written with :func:`readers.display_to_nifti` and an affine carrying the
spacing, so loading the folder returns exactly the original slice grid.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fewshot_transfer.data.dataset_format import DatasetSpec, ManifestRow, atomic_dir, write_manifest, write_spec
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.readers import display_to_nifti
from fewshot_transfer.data.slices import LUNG_WINDOW

if TYPE_CHECKING:
    from fewshot_transfer.data.phantom import PhantomVolume, ScannerProfile

log = logging.getLogger(__name__)

#: Part of the phantom cache key: bump when the exported files change for the same volumes.
EXPORT_VERSION = 1
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def hu_to_storage(hu: np.ndarray, intensity: str, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """HU -> the stored array: int16 HU, or uint8 0..255 over ``window``."""
    if intensity == "hu":
        return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    if intensity == "windowed-uint8":
        lo, hi = window
        return np.rint((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    raise DatasetError(f'intensity {intensity!r} is not "hu" or "windowed-uint8"')


def save_nifti(path: Path | str, slices: np.ndarray, spacing_mm: tuple[float, ...]) -> Path:
    """Write ``[Z, H, W]`` slices as a NIfTI volume with spacing (row, col[, slice]) in mm."""
    import nibabel as nib

    row, col = float(spacing_mm[0]), float(spacing_mm[1])
    thick = float(spacing_mm[2]) if len(spacing_mm) > 2 else 1.0
    data = display_to_nifti(np.asarray(slices))
    img = nib.Nifti1Image(data, np.diag([col, row, thick, 1.0]))
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return Path(path)


def write_phantom_dataset(
    volumes: list[PhantomVolume],
    out_dir: Path | str,
    *,
    name: str,
    profile: ScannerProfile | None,
    overwrite: bool = False,
) -> Path:
    """Write ``images/``, ``masks/``, ``lungs/`` NIfTI per patient plus dataset.json and manifest.csv.

    The folder appears atomically (built in a temporary sibling and renamed): on any
    failure nothing is left behind. ``profile`` picks the intensity convention (None:
    "hu"). Returns ``out_dir``.
    """
    if not volumes:
        raise DatasetError(f"no phantom volumes to write to {out_dir}; generate at least one patient")
    intensity = profile.intensity if profile is not None else "hu"
    ids = [v.patient_id for v in volumes]
    bad = [pid for pid in ids if not _SAFE_ID.match(pid)]
    if bad or len(set(ids)) != len(ids):
        raise DatasetError(f"phantom patient ids must be unique file-name-safe strings; got {bad or ids}")
    domains = sorted({v.domain for v in volumes})
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for sub in ("images", "masks", "lungs"):
            (tmp / sub).mkdir()
        rows = []
        for vol in volumes:
            rel = {sub: f"{sub}/{vol.patient_id}.nii.gz" for sub in ("images", "masks", "lungs")}
            save_nifti(tmp / rel["images"], hu_to_storage(vol.hu, intensity), vol.spacing_mm)
            save_nifti(tmp / rel["masks"], (np.asarray(vol.lesion) > 0).astype(np.uint8), vol.spacing_mm)
            save_nifti(tmp / rel["lungs"], (np.asarray(vol.lung) > 0).astype(np.uint8), vol.spacing_mm)
            rows.append(ManifestRow(image=rel["images"], mask=rel["masks"], patient=vol.patient_id, lung=rel["lungs"]))
        spec = DatasetSpec(
            name=name,
            intensity=intensity,
            lesion_labels=(1,),
            labels={1: "lesion"},
            spacing_mm=(float(volumes[0].spacing_mm[0]), float(volumes[0].spacing_mm[1])),
            description=(
                f"ftbench CT phantom, domain {'/'.join(domains)}, {len(volumes)} patients, "
                f"{volumes[0].hu.shape[0]} slices of {volumes[0].hu.shape[1]}x{volumes[0].hu.shape[2]} each; "
                f"scanner profile {profile!r}"
            ),
        )
        write_spec(tmp, spec)
        write_manifest(tmp, rows)
    log.info("wrote phantom dataset %s (%d patients, intensity %s)", out_dir, len(volumes), intensity)
    return Path(out_dir)
