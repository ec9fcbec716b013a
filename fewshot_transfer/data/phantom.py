"""Synthetic chest-CT phantom: the embedded default benchmark (CAP source, COVID-19 target).

The public CT datasets cannot be downloaded at run time and no test may need them, yet
every learner, test and tutorial needs two lesion-segmentation domains that differ the
way CAP and COVID-19 differ. This module draws them: short stacks of axial slices in HU, with a lesion mask and a lung mask,
deterministic from ``(seed, domain, patient index)``.

* Anatomy (``phantom_anatomy``): body outline, fat, muscle, ribs, spine, mediastinum,
  heart, lungs with a posterior density gradient and vessels; size and shape vary per
  patient and change smoothly from apex (z = 0) to base (z = Z - 1).
* Disease (``phantom_lesions``): COVID-19 ground glass (bilateral, subpleural, posterior,
  lower zone) versus CAP lobar consolidation (unilateral wedge, air bronchograms,
  tree-in-bud, pleural effusion).
* Scanner (:class:`ScannerProfile`): blur, noise and HU offset per domain, so the domain
  gap has a knob apart from the disease itself.

Pleural effusion is fluid outside the lung: it is carved out of the lung mask and is
*not* lesion unless ``effusion_as_lesion=True`` (as in MedSeg, which labels it
separately); only then can the lesion mask leave the lung mask.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from fewshot_transfer.data.phantom_anatomy import (
    BLOOD_HU,
    LEFT,
    RIGHT,
    draw_thorax,
    draw_thorax_params,
    make_frame,
    smooth_noise,
    vessel_alpha,
)
from fewshot_transfer.data.phantom_lesions import AIR_BRONCHOGRAM_HU, DISEASES, Disease, covid_disease
from fewshot_transfer.data.slices import SliceSet, hu_to_unit

#: Bump whenever the generator's output changes, so cached phantoms are invalidated.
PHANTOM_VERSION = "1"

DOMAINS = ("cap", "covid")

#: Field of view (mm) across the image, and the cranio-caudal extent (mm) of a stack.
FIELD_OF_VIEW_MM = 350.0
STACK_EXTENT_MM = 240.0

#: CT values are stored clipped to the scanner's range.
HU_RANGE = (-1024.0, 3071.0)

Intensity = Literal["hu", "windowed-uint8"]


@dataclass(frozen=True)
class ScannerProfile:
    """How a site's scanner renders the anatomy (applied after drawing, in this order).

    Attributes:
        noise_sigma_hu: std of additive Gaussian noise (HU).
        blur_sigma_px: Gaussian blur standing in for the reconstruction kernel, in pixels
            of the generated image (smaller = sharper kernel).
        intensity: how an exporter stores this domain on disk: ``"hu"``, or
            ``"windowed-uint8"`` (lung window [-1250, 250] scaled to 0..255). Generated
            arrays are always HU.
        hu_offset: calibration offset added to every pixel (HU).
        hu_scale: calibration gain around air, ``-1000 + hu_scale * (hu + 1000)`` (before the offset).
        lesion_hu_shift: HU added to the lesion tissue before the scanner (a class-conditional
            shift: lesions change appearance differently from the background). Positive-control
            scenarios only; 0 in the default profiles.
        lesion_size: in-plane extent of COVID-19-type foci relative to the default (the area
            scales roughly with its square; < 1 makes tiny lesions for the imbalance control).
            Only COVID-19-type lesions take it.
    """

    noise_sigma_hu: float = 25.0
    blur_sigma_px: float = 0.8
    intensity: Intensity = "hu"
    hu_offset: float = 0.0
    hu_scale: float = 1.0
    lesion_hu_shift: float = 0.0
    lesion_size: float = 1.0

    def __post_init__(self) -> None:
        if self.noise_sigma_hu < 0 or self.blur_sigma_px < 0:
            raise ValueError(f"ScannerProfile: noise and blur must be >= 0, got {self}")
        if self.hu_scale <= 0 or self.lesion_size <= 0:
            raise ValueError(f"ScannerProfile: hu_scale and lesion_size must be > 0, got {self}")
        if self.intensity not in ("hu", "windowed-uint8"):
            raise ValueError(f"ScannerProfile: intensity must be 'hu' or 'windowed-uint8', got {self.intensity!r}")


DEFAULT_PROFILES: dict[str, ScannerProfile] = {
    "cap": ScannerProfile(noise_sigma_hu=25.0, blur_sigma_px=0.8, intensity="hu", hu_offset=0.0),
    "covid": ScannerProfile(noise_sigma_hu=40.0, blur_sigma_px=0.5, intensity="hu", hu_offset=15.0),
}


@dataclass(frozen=True)
class PhantomVolume:
    """One synthetic patient: a short axial stack from apex (z = 0) to base (z = Z - 1).

    ``profile`` and ``recipe`` (the JSON of the generator arguments) record how it was
    made; ``recipe`` is what :func:`volumes_to_slices` fingerprints.
    """

    patient_id: str
    domain: str
    hu: np.ndarray  # float32 [Z, H, W]
    lesion: np.ndarray  # uint8 [Z, H, W]
    lung: np.ndarray  # uint8 [Z, H, W]
    spacing_mm: tuple[float, float, float]  # (row, col, slice)
    profile: ScannerProfile | None = field(default=None, compare=False)
    recipe: str = field(default="", compare=False, repr=False)


def _check(domain: str, size: int, n_slices: int) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown phantom domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    if int(size) != size or size < 32:
        raise ValueError(f"phantom size must be an integer >= 32 pixels, got {size!r}")
    if int(n_slices) != n_slices or n_slices < 1:
        raise ValueError(f"phantom n_slices must be an integer >= 1, got {n_slices!r}")


def _patient_rngs(seed: int, domain: str, index: int) -> list[np.random.Generator]:
    """Independent streams (anatomy, vessels, disease, texture, noise) for one patient.

    Keyed by (seed, domain, index) only, so patient i is the same however many patients
    are generated; separate streams keep the layout the same at any image size.
    """
    ss = np.random.SeedSequence([int(seed), zlib.crc32(domain.encode()), int(index)])
    return [np.random.default_rng(s) for s in ss.spawn(5)]


def _recipe(
    domain: str, index: int, size: int, n_slices: int, seed: int, profile: ScannerProfile, effusion_as_lesion: bool
) -> str:
    return json.dumps(
        {
            "generator": "ftbench-phantom",
            "version": PHANTOM_VERSION,
            "domain": domain,
            "index": int(index),
            "size": int(size),
            "n_slices": int(n_slices),
            "seed": int(seed),
            "profile": asdict(profile),
            "effusion_as_lesion": bool(effusion_as_lesion),
        },
        sort_keys=True,
    )


def apply_scanner(hu: np.ndarray, profile: ScannerProfile, rng: np.random.Generator) -> np.ndarray:
    """Blur (reconstruction kernel), add noise, the HU gain and offset, clip to the stored range."""
    out = hu
    if profile.blur_sigma_px > 0:
        out = ndimage.gaussian_filter(out, sigma=(0.0, profile.blur_sigma_px, profile.blur_sigma_px), truncate=3.0)
    if profile.noise_sigma_hu > 0:
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(profile.noise_sigma_hu)
    if profile.hu_scale != 1.0:
        out = np.float32(-1000.0) + np.float32(profile.hu_scale) * (out + np.float32(1000.0))
    out = out + np.float32(profile.hu_offset)
    return np.clip(out, *HU_RANGE).astype(np.float32, copy=False)


def _compose(hu: np.ndarray, lung: np.ndarray, vessels: np.ndarray, disease: Disease) -> np.ndarray:
    """Layer the disease over the normal chest (in place): lesion tissue, then the vessels
    (still visible through ground glass), then air bronchograms, then pleural fluid."""
    hu += disease.alpha * (disease.hu - hu)
    hu += (vessels * lung) * (BLOOD_HU - hu)
    hu += disease.air * (AIR_BRONCHOGRAM_HU - hu)
    hu[disease.effusion] = disease.effusion_hu
    return hu


def generate_patient(
    domain: str,
    index: int,
    *,
    size: int = 64,
    n_slices: int = 12,
    seed: int = 0,
    profile: ScannerProfile | None = None,
    effusion_as_lesion: bool = False,
) -> PhantomVolume:
    """Draw patient ``index`` of ``domain``: anatomy, disease, then the scanner.

    ``profile`` defaults to ``DEFAULT_PROFILES[domain]``. Pleural effusion (common in
    CAP, rare in COVID-19) is never part of the lung mask; it joins the lesion mask only
    with ``effusion_as_lesion=True``. The same (seed, domain, index) gives the same
    anatomy and lesions at any ``size``; only the scanner noise is drawn per pixel.
    """
    _check(domain, size, n_slices)
    if index < 0:
        raise ValueError(f"patient index must be >= 0, got {index}")
    if profile is None:
        profile = DEFAULT_PROFILES[domain]
    r_anat, r_vessel, r_disease, r_tex, r_noise = _patient_rngs(seed, domain, index)
    frame = make_frame(size, n_slices)

    anat = draw_thorax(frame, draw_thorax_params(r_anat), smooth_noise(r_tex, frame, 0.15, 0.2))
    vessels = vessel_alpha(frame, anat, r_vessel)
    if profile.lesion_size != 1.0 and domain != "covid":
        raise ValueError(f"lesion_size applies to COVID-19-type lesions only, not to {domain!r}")
    if domain == "covid":
        disease = covid_disease(frame, anat, r_disease, r_tex, size=profile.lesion_size)
    else:
        disease = DISEASES[domain](frame, anat, r_disease, r_tex)
    disease.hu += np.float32(profile.lesion_hu_shift)
    lung = (anat.lungs[RIGHT] | anat.lungs[LEFT]) & ~disease.effusion
    hu = _compose(anat.hu, lung, vessels, disease)
    lesion = disease.mask | disease.effusion if effusion_as_lesion else disease.mask

    spacing = FIELD_OF_VIEW_MM / size
    return PhantomVolume(
        patient_id=f"{domain}-p{index:03d}",
        domain=domain,
        hu=apply_scanner(hu, profile, r_noise),
        lesion=lesion.astype(np.uint8),
        lung=lung.astype(np.uint8),
        spacing_mm=(spacing, spacing, STACK_EXTENT_MM / n_slices),
        profile=profile,
        recipe=_recipe(domain, index, size, n_slices, seed, profile, effusion_as_lesion),
    )


def generate_volumes(
    domain: str,
    n_patients: int,
    *,
    size: int = 64,
    n_slices: int = 12,
    seed: int = 0,
    profile: ScannerProfile | None = None,
    effusion_as_lesion: bool = False,
) -> list[PhantomVolume]:
    """Patients ``0 .. n_patients - 1`` of one domain."""
    _check(domain, size, n_slices)
    if n_patients < 1:
        raise ValueError(f"n_patients must be >= 1, got {n_patients}")
    return [
        generate_patient(
            domain, i, size=size, n_slices=n_slices, seed=seed, profile=profile, effusion_as_lesion=effusion_as_lesion
        )
        for i in range(n_patients)
    ]


def _volume_key(vol: PhantomVolume) -> str:
    """The recipe of a generated volume; a content hash for one built by hand."""
    if vol.recipe:
        return vol.recipe
    h = hashlib.sha256()
    for arr in (vol.hu, vol.lesion, vol.lung):
        h.update(np.ascontiguousarray(arr).tobytes())
    return f"{vol.patient_id}:{h.hexdigest()}"


def volumes_to_slices(volumes: list[PhantomVolume], name: str) -> SliceSet:
    """Flatten volumes into one labeled :class:`SliceSet` (lung window applied)."""
    if not volumes:
        raise ValueError("volumes_to_slices needs at least one volume")
    shapes = {v.hu.shape[1:] for v in volumes}
    if len(shapes) != 1:
        raise ValueError(f"volumes_to_slices: volumes have different slice sizes {sorted(shapes)}")
    counts = [v.hu.shape[0] for v in volumes]
    n = sum(counts)
    fingerprint = hashlib.sha256(
        "\n".join([f"phantom-v{PHANTOM_VERSION}", *map(_volume_key, volumes)]).encode()
    ).hexdigest()[:16]
    profiles = {v.domain: asdict(v.profile) for v in volumes if v.profile is not None}
    return SliceSet(
        images=hu_to_unit(np.concatenate([v.hu for v in volumes])),
        masks=np.concatenate([v.lesion for v in volumes]).astype(np.uint8),
        labeled=np.ones(n, dtype=bool),
        patients=np.repeat(np.array([v.patient_id for v in volumes]), counts),
        slice_index=np.concatenate([np.arange(c, dtype=np.int32) for c in counts]),
        splits=np.full(n, "", dtype=object).astype(str),
        spacing=np.repeat(np.array([v.spacing_mm[:2] for v in volumes], dtype=np.float32), counts, axis=0),
        lungs=np.concatenate([v.lung for v in volumes]).astype(np.uint8),
        name=name,
        fingerprint=fingerprint,
        meta={
            "source": "phantom",
            "phantom_version": PHANTOM_VERSION,
            "domains": sorted({v.domain for v in volumes}),
            "profiles": profiles,
            "slice_spacing_mm": sorted({v.spacing_mm[2] for v in volumes}),
        },
    )


def generate_slices(
    domain: str,
    n_patients: int,
    *,
    size: int = 64,
    n_slices: int = 12,
    seed: int = 0,
    profile: ScannerProfile | None = None,
    effusion_as_lesion: bool = False,
) -> SliceSet:
    """:func:`generate_volumes` flattened into a SliceSet named ``phantom-<domain>``."""
    volumes = generate_volumes(
        domain,
        n_patients,
        size=size,
        n_slices=n_slices,
        seed=seed,
        profile=profile,
        effusion_as_lesion=effusion_as_lesion,
    )
    return volumes_to_slices(volumes, name=f"phantom-{domain}")
