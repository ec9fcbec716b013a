"""The CT phantom: HU per tissue, lesion statistics, CAP vs COVID-19 differences, determinism."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from fewshot_transfer.data.phantom import (
    DEFAULT_PROFILES,
    DOMAINS,
    HU_RANGE,
    PhantomVolume,
    ScannerProfile,
    generate_patient,
    generate_slices,
    generate_volumes,
    volumes_to_slices,
)
from fewshot_transfer.data.slices import hu_to_unit

SIZE = 64
N_SLICES = 12
N_PATIENTS = 10


@pytest.fixture(scope="module")
def volumes() -> dict[str, list[PhantomVolume]]:
    return {d: generate_volumes(d, N_PATIENTS, size=SIZE, n_slices=N_SLICES, seed=0) for d in DOMAINS}


def stack(vols: list[PhantomVolume], attr: str) -> np.ndarray:
    return np.concatenate([getattr(v, attr) for v in vols])


def positive_rows(vols: list[PhantomVolume]) -> tuple[np.ndarray, np.ndarray]:
    lesion = stack(vols, "lesion").astype(bool)
    return lesion, np.flatnonzero(lesion.any(axis=(1, 2)))


def mean_depth(vols: list[PhantomVolume]) -> float:
    """Mean over positive slices of lesion pixels' distance to the lung edge / the slice's max."""
    lesion, rows = positive_rows(vols)
    lung = stack(vols, "lung").astype(bool)
    out = []
    for i in rows:
        d = ndimage.distance_transform_edt(lung[i])
        out.append(d[lesion[i]].mean() / d.max())
    return float(np.mean(out))


def bilateral_share(vols: list[PhantomVolume]) -> float:
    lesion, rows = positive_rows(vols)
    half = lesion.shape[2] // 2
    return float(np.mean([lesion[i, :, :half].any() and lesion[i, :, half:].any() for i in rows]))


# ------------------------------------------------------------------ basic contract


def test_volume_fields(volumes):
    vol = volumes["cap"][7]
    assert vol.patient_id == "cap-p007" and vol.domain == "cap"
    assert vol.hu.shape == vol.lesion.shape == vol.lung.shape == (N_SLICES, SIZE, SIZE)
    assert vol.hu.dtype == np.float32 and vol.lesion.dtype == np.uint8 and vol.lung.dtype == np.uint8
    assert set(np.unique(vol.lesion)) <= {0, 1} and set(np.unique(vol.lung)) <= {0, 1}
    assert HU_RANGE[0] <= vol.hu.min() and vol.hu.max() <= HU_RANGE[1]
    row, col, sl = vol.spacing_mm
    assert row == col == pytest.approx(350.0 / SIZE) and sl > 0
    assert vol.profile == DEFAULT_PROFILES["cap"]


def test_every_slice_has_lungs_that_grow_toward_the_base(volumes):
    for vols in volumes.values():
        area = np.array([v.lung.reshape(N_SLICES, -1).sum(axis=1) for v in vols])
        assert (area > 0).all()
        assert (area[:, 0] < area[:, N_SLICES // 2]).all()


def test_minimum_size_and_single_slice():
    vol = generate_patient("covid", 0, size=32, n_slices=1)
    assert vol.hu.shape == (1, 32, 32) and vol.lung.any()


# ----------------------------------------------------------------------- HU facts


def test_lung_parenchyma_hu(volumes):
    for domain, vols in volumes.items():
        parenchyma = stack(vols, "hu")[(stack(vols, "lung") > 0) & (stack(vols, "lesion") == 0)]
        assert -870 <= np.median(parenchyma) <= -760, domain


def test_lesion_hu_differs_by_domain(volumes):
    covid = stack(volumes["covid"], "hu")[stack(volumes["covid"], "lesion") > 0]
    cap = stack(volumes["cap"], "hu")[stack(volumes["cap"], "lesion") > 0]
    assert -700 <= np.median(covid) <= -300  # ground glass
    assert -150 <= np.median(cap) <= 60  # consolidation (air bronchograms are a minority)
    assert np.median(cap) - np.median(covid) > 250


def test_air_and_bone(volumes):
    for domain, vols in volumes.items():
        hu = stack(vols, "hu")
        corners = np.concatenate([hu[:, :4, :4].ravel(), hu[:, -4:, -4:].ravel()])
        assert abs(np.median(corners) - (-1000 + DEFAULT_PROFILES[domain].hu_offset)) < 30, domain
        assert (hu > 300).sum() > 50 * len(vols), domain


# ------------------------------------------------------------- lesion statistics


@pytest.mark.parametrize("domain", DOMAINS)
def test_lesion_fraction_distribution(volumes, domain):
    frac = stack(volumes[domain], "lesion").reshape(-1, SIZE * SIZE).mean(axis=1)
    positive = frac[frac > 0]
    assert 0.15 <= np.mean(frac == 0) <= 0.5
    assert 0.01 <= np.median(positive) <= 0.15
    assert np.mean((positive >= 0.002) & (positive <= 0.25)) >= 0.8


def test_covid_is_more_peripheral_than_cap(volumes):
    assert mean_depth(volumes["covid"]) < 0.8 * mean_depth(volumes["cap"])


def test_covid_is_more_often_bilateral(volumes):
    assert bilateral_share(volumes["covid"]) > bilateral_share(volumes["cap"]) + 0.25


def test_covid_is_lower_zone_weighted(volumes):
    area = stack(volumes["covid"], "lesion").reshape(N_PATIENTS, N_SLICES, -1).sum(axis=(0, 2))
    third = N_SLICES // 3
    assert area[-third:].sum() > 1.5 * area[:third].sum()


def test_lesion_inside_lung_unless_effusion_counts(volumes):
    for vols in volumes.values():
        assert not (stack(vols, "lesion") & ~stack(vols, "lung").astype(bool)).any()
    plain = [generate_patient("cap", i) for i in range(8)]
    wet = [generate_patient("cap", i, effusion_as_lesion=True) for i in range(8)]
    extra = [(w.lesion > 0) & (p.lesion == 0) for p, w in zip(plain, wet)]
    assert any(e.any() for e in extra), "no CAP effusion among the first 8 patients"
    for p, w, e in zip(plain, wet, extra):
        np.testing.assert_array_equal(w.hu, p.hu)
        np.testing.assert_array_equal(w.lung, p.lung)
        assert not (e & (p.lung > 0)).any()  # the fluid is outside the lung
    fluid = np.concatenate([p.hu[e] for p, e in zip(plain, extra)])
    assert -150 < np.median(fluid) < 60  # fluid-dense, though thin layers blur into the lung


# ------------------------------------------------------------------ determinism


def test_same_arguments_same_arrays():
    a = generate_patient("covid", 3, seed=5)
    b = generate_patient("covid", 3, seed=5)
    for attr in ("hu", "lesion", "lung"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))


def test_patient_independent_of_cohort_size():
    three = generate_volumes("cap", 3, seed=2)
    five = generate_volumes("cap", 5, seed=2)
    for a, b in zip(three, five):
        np.testing.assert_array_equal(a.hu, b.hu)
        np.testing.assert_array_equal(a.lesion, b.lesion)


def test_seeds_and_domains_differ():
    a = generate_patient("covid", 0, seed=0)
    assert not np.array_equal(a.hu, generate_patient("covid", 0, seed=1).hu)
    assert not np.array_equal(a.lesion, generate_patient("cap", 0, seed=0).lesion)


def test_layout_is_the_same_at_any_size():
    small = generate_patient("covid", 4, size=64).lesion.reshape(N_SLICES, -1).mean(axis=1)
    large = generate_patient("covid", 4, size=128).lesion.reshape(N_SLICES, -1).mean(axis=1)
    assert np.corrcoef(small, large)[0, 1] > 0.95
    assert np.abs(small - large).max() < 0.01


# ----------------------------------------------------------------- scanner profile


def test_scanner_offset_and_noise_are_applied_after_anatomy():
    clean = generate_patient("cap", 1, profile=ScannerProfile(noise_sigma_hu=0.0, blur_sigma_px=0.8))
    shifted = generate_patient("cap", 1, profile=ScannerProfile(noise_sigma_hu=0.0, blur_sigma_px=0.8, hu_offset=50.0))
    noisy = generate_patient("cap", 1, profile=ScannerProfile(noise_sigma_hu=40.0, blur_sigma_px=0.8))
    body = clean.hu > -900  # away from the clip at -1024
    np.testing.assert_allclose(shifted.hu[body] - clean.hu[body], 50.0, atol=1e-3)
    assert np.std(noisy.hu[body] - clean.hu[body]) == pytest.approx(40.0, rel=0.05)
    np.testing.assert_array_equal(noisy.lesion, clean.lesion)


def test_blur_softens_edges():
    sharp = generate_patient("cap", 1, profile=ScannerProfile(noise_sigma_hu=0.0, blur_sigma_px=0.0))
    soft = generate_patient("cap", 1, profile=ScannerProfile(noise_sigma_hu=0.0, blur_sigma_px=1.5))
    grad = lambda hu: np.abs(np.diff(hu, axis=2)).mean()  # noqa: E731
    assert grad(soft.hu) < 0.8 * grad(sharp.hu)


def test_profile_validation():
    with pytest.raises(ValueError, match="intensity"):
        ScannerProfile(intensity="png")
    with pytest.raises(ValueError, match=">= 0"):
        ScannerProfile(noise_sigma_hu=-1.0)
    assert DEFAULT_PROFILES["cap"] != DEFAULT_PROFILES["covid"]


# --------------------------------------------------------------------- SliceSet


def test_volumes_to_slices(volumes):
    vols = volumes["covid"][:3]
    ss = volumes_to_slices(vols, name="target")
    assert len(ss) == 3 * N_SLICES and ss.shape == (SIZE, SIZE) and ss.name == "target"
    np.testing.assert_array_equal(ss.images, hu_to_unit(stack(vols, "hu")))
    np.testing.assert_array_equal(ss.masks, stack(vols, "lesion"))
    np.testing.assert_array_equal(ss.lungs, stack(vols, "lung"))
    assert ss.labeled.all() and set(ss.splits.tolist()) == {""}
    assert ss.patients.tolist() == [v.patient_id for v in vols for _ in range(N_SLICES)]
    assert ss.slice_index.tolist() == list(range(N_SLICES)) * 3
    np.testing.assert_allclose(ss.spacing, 350.0 / SIZE)
    assert re.fullmatch(r"[0-9a-f]{16}", ss.fingerprint)


def test_fingerprint_tracks_generator_arguments():
    fp = lambda **kw: generate_slices("cap", 2, n_slices=2, **kw).fingerprint  # noqa: E731
    base = fp()
    assert fp() == base
    assert fp(seed=1) != base
    assert fp(profile=replace(DEFAULT_PROFILES["cap"], noise_sigma_hu=10.0)) != base
    assert fp(effusion_as_lesion=True) != base
    assert generate_slices("covid", 2, n_slices=2).name == "phantom-covid"


# -------------------------------------------------------------------- bad input


def test_unknown_domain_names_the_valid_ones():
    with pytest.raises(ValueError, match="cap, covid"):
        generate_patient("flu", 0)
    with pytest.raises(ValueError, match="cap, covid"):
        generate_slices("CAP", 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 16}, {"size": 31}, {"n_slices": 0}, {"size": 64.5}],
)
def test_nonsensical_sizes(kwargs):
    with pytest.raises(ValueError, match="size|n_slices"):
        generate_volumes("covid", 1, **kwargs)


def test_nonsensical_counts():
    with pytest.raises(ValueError, match="n_patients"):
        generate_volumes("cap", 0)
    with pytest.raises(ValueError, match="index"):
        generate_patient("cap", -1)
    with pytest.raises(ValueError, match="at least one"):
        volumes_to_slices([], name="x")


#: Content hash of patients 0-2 of each domain at 128 px (HU, lesion and lung arrays). Pinned
#: so that a machine with another CPU checks itself against this one: before the float64
#: evaluation of the angle / exp fields, CAP at 128 px hashed differently on AVX2 and AVX-512.
PINNED_128 = {"cap": "65b97d854cf6d195", "covid": "c95359d4da9c8ef1"}
_HASH_SCRIPT = """
import hashlib, json, numpy as np
from fewshot_transfer.data.phantom import generate_volumes
out = {}
for domain in ("cap", "covid"):
    h = hashlib.sha256()
    for v in generate_volumes(domain, 3, size=128, n_slices=12, seed=0):
        for a in (v.hu, v.lesion, v.lung):
            h.update(np.ascontiguousarray(a).tobytes())
    out[domain] = h.hexdigest()[:16]
print(json.dumps(out))
"""


def _kernel_paths() -> dict[str, dict[str, str]]:
    """numpy's SIMD dispatch levels this CPU has (AVX-512, AVX2, the x86-64-v2 baseline), plus torch's."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    present = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    paths = {"native": {}, "torch-default": {"ATEN_CPU_CAPABILITY": "default"}}
    no_avx512 = [f for f in present if f.startswith("AVX512") or f == "X86_V4"]
    if no_avx512:
        paths["no-avx512"] = {"NPY_DISABLE_CPU_FEATURES": " ".join(no_avx512)}
    if present:
        paths["baseline"] = {"NPY_DISABLE_CPU_FEATURES": " ".join(present), "ATEN_CPU_CAPABILITY": "default"}
    return paths


def test_128px_phantom_is_the_same_on_every_kernel_path():
    """Generated under each numpy / torch kernel path this CPU offers, the 128 px phantom has one content hash."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    hashes = {}
    for name, env in _kernel_paths().items():
        full = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", **env}
        done = subprocess.run(
            [sys.executable, "-c", _HASH_SCRIPT], env=full, capture_output=True, text=True, check=True, cwd=root
        )
        hashes[name] = json.loads(done.stdout)
    assert all(h == hashes["native"] for h in hashes.values()), hashes
    assert hashes["native"] == PINNED_128
