"""Read one image or mask file into a stack of 2D slices in display orientation.

Supported: NIfTI volumes (``.nii``, ``.nii.gz``; nibabel, scl_slope/inter honoured),
2D rasters (``.png``, ``.jpg``/``.jpeg``, ``.tif``/``.tiff``, ``.bmp``; PIL, colour
converted to grayscale) and ``.npy`` arrays (2D ``[H, W]`` or 3D ``[Z, H, W]``).

Orientation convention: a NIfTI volume stored ``[X, Y, Z]`` yields slice ``z`` as
``vol[:, :, z].T`` (rows along Y, columns along X), the usual radiological display of a
RAS-stored volume. The affine is not used to reorient: one fixed rule keeps loaders and
the exporter exactly inverse (:func:`display_to_nifti`), and 2D lesion segmentation does
not depend on left/right conventions.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fewshot_transfer.data.errors import DatasetError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NUMPY_SUFFIXES = (".npy",)
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + RASTER_SUFFIXES + NUMPY_SUFFIXES


@dataclass(frozen=True)
class RawArray:
    """A decoded file: ``data`` is ``[Z, H, W]`` (one z for 2D files), native resolution.

    ``spacing_mm`` is (row, col) from the file header, None when the file has none;
    ``is_volume`` says whether z slices are addressable (NIfTI, 3D ``.npy``).
    """

    data: np.ndarray
    spacing_mm: tuple[float, float] | None
    is_volume: bool


def file_kind(path: Path | str) -> str:
    """ "nifti", "raster" or "npy" by file name; DatasetError for anything else."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    if name.endswith(NUMPY_SUFFIXES):
        return "npy"
    raise DatasetError(
        f"{path}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)} "
        f"(convert DICOM series to NIfTI first, e.g. with dcm2niix)"
    )


def nifti_to_display(vol: np.ndarray) -> np.ndarray:
    """``[X, Y, Z]`` NIfTI array -> ``[Z, H, W]`` slices (``vol[:, :, z].T``)."""
    return np.transpose(vol, (2, 1, 0))


def display_to_nifti(slices: np.ndarray) -> np.ndarray:
    """Inverse of :func:`nifti_to_display`: ``[Z, H, W]`` -> ``[X, Y, Z]``."""
    return np.ascontiguousarray(np.transpose(slices, (2, 1, 0)))


def read_image(path: Path | str) -> RawArray:
    """Intensities as float32 ``[Z, H, W]``; NaN/Inf voxels are a DatasetError."""
    path = Path(path)
    raw = _read(path, as_mask=False)
    data = raw.data
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise DatasetError(f"{path}: image dtype {data.dtype} is not real-valued; store intensities as numbers")
    data = data.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise DatasetError(
            f"{path}: {bad} voxel(s) are NaN or Inf; ftbench cannot guess their intensity — "
            f"fix or re-export the file (e.g. replace them with -1000 HU, air)"
        )
    return RawArray(data, raw.spacing_mm, raw.is_volume)


def read_label(path: Path | str) -> RawArray:
    """Label map as an integer ``[Z, H, W]`` array; non-integer values are a DatasetError."""
    path = Path(path)
    raw = _read(path, as_mask=True)
    data = raw.data
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.array_equal(data, np.rint(data)):
            raise DatasetError(
                f"{path}: mask holds non-integer, NaN or Inf values; a mask must hold integer labels "
                f"(resample masks with nearest-neighbour interpolation)"
            )
        data = np.rint(data).astype(np.int32)
    elif not np.issubdtype(data.dtype, np.integer):
        raise DatasetError(f"{path}: mask dtype {data.dtype} is not an integer label map")
    return RawArray(data, raw.spacing_mm, raw.is_volume)


def _read(path: Path, *, as_mask: bool) -> RawArray:
    kind = file_kind(path)
    if kind == "nifti":
        img = _load_nifti(path)
        if as_mask:
            arr = _decode(path, lambda: np.asanyarray(img.dataobj))
        else:
            arr = _decode(path, lambda: img.get_fdata(dtype=np.float32, caching="unchanged"))
        data, spacing = _nifti_slices(path, img, arr)
        return RawArray(data, spacing, True)
    if kind == "raster":
        return RawArray(_read_raster(path, as_mask=as_mask)[None], None, False)
    arr = _read_npy(path)
    return RawArray(arr if arr.ndim == 3 else arr[None], None, arr.ndim == 3)


def _load_nifti(path: Path) -> Any:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        return nib.load(str(path))
    except (ImageFileError, OSError, EOFError, zlib.error, ValueError) as err:
        raise DatasetError(
            f"{path}: not a readable NIfTI file ({type(err).__name__}: {err}); re-download or re-export it"
        ) from None


def _decode(path: Path, fn: Callable[[], np.ndarray]) -> np.ndarray:
    from nibabel.filebasedimages import ImageFileError

    try:
        return fn()
    except (ImageFileError, OSError, EOFError, zlib.error, ValueError) as err:
        raise DatasetError(
            f"{path}: NIfTI data cannot be decoded ({type(err).__name__}: {err}); the file is truncated or corrupt — "
            f"re-download or re-export it"
        ) from None


def _nifti_slices(path: Path, img: Any, raw: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None]:
    arr = np.asarray(raw)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise DatasetError(
            f"{path}: NIfTI array has shape {tuple(raw.shape)}; expected a 3D volume [X, Y, Z] "
            f"(split multi-channel or 4D series into one file per volume)"
        )
    zooms = tuple(float(z) for z in img.header.get_zooms()[:2])
    spacing = (zooms[1], zooms[0]) if len(zooms) == 2 and all(np.isfinite(zooms)) and min(zooms) > 0 else None
    return nifti_to_display(arr), spacing


def _read_raster(path: Path, *, as_mask: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P" and as_mask:
                return np.asarray(img)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F", "L"):
                return np.asarray(img)
            return np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"{path}: not a readable image ({type(err).__name__}: {err}); re-export it") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetError(
            f"{path}: not a readable .npy array ({err}); save it with numpy.save (no pickled objects)"
        ) from None
    if arr.ndim in (2, 3):
        return arr
    raise DatasetError(f"{path}: .npy array has shape {arr.shape}; expected [H, W] or [Z, H, W]")
