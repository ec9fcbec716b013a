"""The one in-memory container every loader produces and every learner consumes.

A ``SliceSet`` is a struct of arrays over 2D axial slices: normalized images, binary
lesion masks, which rows are labeled, and the patient each slice belongs to. Keeping
it a plain bundle of numpy arrays makes it cheap to cache (one ``.npz``), to subset
(patient-disjoint pools are index arrays) and to hand to torch (``torch.from_numpy``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

#: The lung window every image is mapped through: HU clipped to [lo, hi], scaled to [0, 1].
LUNG_WINDOW: tuple[float, float] = (-1250.0, 250.0)


def hu_to_unit(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` and scale to [0, 1] (float32)."""
    lo, hi = window
    out = (np.asarray(hu, dtype=np.float32) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def unit_to_hu(x: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Inverse of :func:`hu_to_unit` inside the window (for reporting HU statistics)."""
    lo, hi = window
    return np.asarray(x, dtype=np.float32) * (hi - lo) + lo


@dataclass(frozen=True, eq=False)
class NativeSlice:
    """One slice's lesion mask at its original resolution (before resizing to ``data.size``).

    Attributes:
        mask: uint8 ``[H0, W0]`` binary lesion mask as stored in the dataset.
        spacing: ``(row, col)`` mm of the original pixels; NaN when unknown.
    """

    mask: np.ndarray
    spacing: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.mask.shape[0]), int(self.mask.shape[1])


@dataclass(frozen=True, eq=False)
class SliceSet:
    """Slices of one dataset (or one pool of it), all resized to one ``H x W``.

    Attributes:
        images: float32 ``[N, H, W]`` in [0, 1] (lung window applied).
        masks: uint8 ``[N, H, W]`` binary lesion mask; all zeros where ``labeled`` is False.
        labeled: bool ``[N]``; False rows are unlabeled (usable for domain adaptation only).
        patients: str ``[N]``; the grouping unit for patient-disjoint splits.
        slice_index: int32 ``[N]``; z index within the patient's volume (or file order).
        splits: str ``[N]``; the dataset's own split ("train"/"test"/...) or "".
        spacing: float32 ``[N, 2]`` in mm (row, col) after resizing; NaN when unknown.
        lungs: optional uint8 ``[N, H, W]`` lung mask (phantoms have one).
        name: dataset name, for reports.
        fingerprint: content hash of the source data + loader settings (cache key, provenance).
        origin: optional int64 ``[N]``: each row's index in the dataset as loaded (``load_dataset``
            sets it; subsets keep it), so original-resolution data can be read back for a pool.
        native: optional per-row :class:`NativeSlice` (original mask and spacing); the harness
            attaches it to the test set only (memory), for native-resolution scoring.
        dataset: optional str ``[N]``: each row's dataset of origin, set when several datasets are
            combined into one domain (``--source A,B``); None for a single dataset (its ``name``).
    """

    images: np.ndarray
    masks: np.ndarray
    labeled: np.ndarray
    patients: np.ndarray
    slice_index: np.ndarray
    splits: np.ndarray
    spacing: np.ndarray
    lungs: np.ndarray | None = None
    name: str = "unnamed"
    fingerprint: str = ""
    meta: dict = field(default_factory=dict, compare=False)
    origin: np.ndarray | None = None
    native: tuple[NativeSlice, ...] | None = None
    dataset: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        for attr in ("origin", "native", "dataset"):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise ValueError(f"SliceSet {self.name!r}: {attr} has {len(value)} rows, images have {n}")
        if self.images.ndim != 3:
            raise ValueError(f"SliceSet {self.name!r}: images must be [N, H, W], got {self.images.shape}")
        for attr in ("masks", "labeled", "patients", "slice_index", "splits", "spacing"):
            if getattr(self, attr).shape[0] != n:
                raise ValueError(
                    f"SliceSet {self.name!r}: {attr} has {getattr(self, attr).shape[0]} rows, images have {n}"
                )
        if self.masks.shape != self.images.shape:
            raise ValueError(
                f"SliceSet {self.name!r}: masks {self.masks.shape} do not match images {self.images.shape}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, index: np.ndarray | list[int]) -> SliceSet:
        """Rows ``index`` as a new SliceSet (arrays are copied, so pools never alias)."""
        idx = np.asarray(index, dtype=np.int64)
        return replace(
            self,
            images=self.images[idx],
            masks=self.masks[idx],
            labeled=self.labeled[idx],
            patients=self.patients[idx],
            slice_index=self.slice_index[idx],
            splits=self.splits[idx],
            spacing=self.spacing[idx],
            lungs=None if self.lungs is None else self.lungs[idx],
            origin=None if self.origin is None else self.origin[idx],
            native=None if self.native is None else tuple(self.native[i] for i in idx.tolist()),
            dataset=None if self.dataset is None else self.dataset[idx],
        )

    def patient_ids(self) -> list[str]:
        """Sorted unique patient ids."""
        return sorted(set(self.patients.tolist()))

    def rows_of(self, patients: set[str] | list[str]) -> np.ndarray:
        """Row indices of the given patients, in dataset order."""
        return np.flatnonzero(np.isin(self.patients, list(patients)))

    def datasets(self) -> np.ndarray:
        """Each row's dataset of origin (``name`` for every row of a single dataset)."""
        return self.dataset if self.dataset is not None else np.full(len(self), self.name)

    def lesion_fraction(self) -> np.ndarray:
        """Per-slice fraction of lesion pixels (float64 ``[N]``)."""
        return self.masks.reshape(len(self), -1).mean(axis=1, dtype=np.float64)

    @staticmethod
    def concat(parts: list[SliceSet], name: str | None = None) -> SliceSet:
        """Stack several SliceSets of the same image size (fingerprints are combined).

        ``origin`` and ``native`` are dropped: rows of different pools or datasets share no index.
        Each row's dataset of origin is kept (``dataset``) when the parts come from more than one.
        """
        if not parts:
            raise ValueError("SliceSet.concat needs at least one part")
        lungs = None
        if all(p.lungs is not None for p in parts):
            lungs = np.concatenate([p.lungs for p in parts])
        fp = hashlib.sha256("|".join(p.fingerprint for p in parts).encode()).hexdigest()[:16]
        origins = [p.datasets() for p in parts]
        mixed = len({str(v) for o in origins for v in np.unique(o)}) > 1
        return SliceSet(
            images=np.concatenate([p.images for p in parts]),
            masks=np.concatenate([p.masks for p in parts]),
            labeled=np.concatenate([p.labeled for p in parts]),
            patients=np.concatenate([p.patients for p in parts]),
            slice_index=np.concatenate([p.slice_index for p in parts]),
            splits=np.concatenate([p.splits for p in parts]),
            spacing=np.concatenate([p.spacing for p in parts]),
            lungs=lungs,
            name=name or "+".join(p.name for p in parts),
            fingerprint=fp,
            dataset=np.concatenate(origins) if mixed else None,
        )
