"""Disease patterns of the CT phantom: COVID-19 ground glass and CAP consolidation.

Each patient gets a set of 3D lesion regions drawn over its whole Z stack, so a lesion
spans several adjacent slices and the slices of one patient are correlated. The two
domains differ where the radiology differs (BRIEF section 3):

* ``covid``: multifocal ground-glass opacity (about -700..-300 HU), subpleural bands on
  both sides, posterior and lower-zone predominant, some with crazy-paving septal lines,
  some with a consolidated core (> -300 HU).
* ``cap``: lobar or segmental consolidation (about -100..+50 HU) filling a wedge of one
  lung from the hilum to the pleura, air bronchograms inside it, clusters of tree-in-bud
  nodules, and more often a dependent pleural effusion.

The lesion mask is what a radiologist labels: all of a consolidation including its air
bronchograms, always inside the lung mask. A pleural effusion lies outside the lung, and
is not lesion unless the caller asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fewshot_transfer.data.phantom_anatomy import (
    LATERAL_SIGN,
    LEFT,
    RIGHT,
    Anatomy,
    Frame,
    Marks,
    Segments,
    branching_tree,
    dot_marks,
    ellipse_q,
    lateral_angle,
    line_marks,
    ray_to_boundary,
    render_marks,
    smooth_noise,
    smoothstep,
    uniform,
    wide,
    zcol,
)

#: Slices whose total lesion is smaller than this share of the image are cleared: a
#: 2-pixel sliver at a lesion's tip is label noise, not a lesion a reader would draw.
MIN_LESION_FRACTION = 0.0012
AIR_BRONCHOGRAM_HU = -950.0


@dataclass
class Disease:
    """What a disease adds to a patient's stack (blend weights, not final pixels)."""

    alpha: np.ndarray  # float32 [Z, H, W]: blend weight toward ``hu`` (0 outside the lungs)
    hu: np.ndarray  # float32 [Z, H, W]: lesion tissue HU
    mask: np.ndarray  # bool [Z, H, W]: labeled lesion
    air: np.ndarray  # float32 [Z, H, W]: air-bronchogram blend weight (inside the lesion)
    effusion: np.ndarray  # bool [Z, H, W]: pleural fluid, carved out of the lungs
    effusion_hu: float


# ------------------------------------------------------------------ shared parts


def pleural_effusion(frame: Frame, anat: Anatomy, rng: np.random.Generator, sides: list[int]) -> np.ndarray:
    """Dependent fluid: the lung pixels within a few mm above the posterior lung edge.

    The layer thickens toward the base, which gives the posterior crescent (meniscus)
    of a supine patient. Thickness is measured along y, so it tapers up the lateral wall.
    """
    out = np.zeros(frame.shape, dtype=bool)
    below_centre = frame.y[None, :, None] > zcol(anat.lung_cy)
    for side in sides:
        thick = uniform(rng, 0.05, 0.15)
        t0 = uniform(rng, 0.45, 0.7)
        k = np.round(thick * np.clip((frame.t - t0) / (1.0 - t0), 0.0, 1.0) * frame.px_per_unit).astype(int)
        lung = anat.lungs[side]
        shifted = np.zeros_like(lung)
        for z in np.flatnonzero(k > 0):
            shifted[z, : -k[z]] = lung[z, k[z] :]  # each pixel sees the lung k rows below it
        has_fluid = (k > 0)[:, None, None]
        out |= lung & ~shifted & below_centre & has_fluid
    return out


def subpleural_weight(frame: Frame, lungs: np.ndarray, reach: float) -> np.ndarray:
    """1 near the pleura, falling to 0 about ``reach`` normalized units inside the lung."""
    width = max(3, int(round(1.7 * reach * frame.px_per_unit)) | 1)
    inner = lungs.astype(np.float32)
    for _ in range(2):  # two box passes: a cheap near-Gaussian, cost independent of reach
        inner = ndimage.uniform_filter(inner, size=(1, width, width), mode="constant")
    return smoothstep(1.0 - inner, 0.04, 0.25)


def _clear_slivers(frame: Frame, mask: np.ndarray, *fields: np.ndarray) -> None:
    """Zero the mask and blend fields of slices whose lesion is a few stray pixels."""
    area = mask.sum(axis=(1, 2))
    tiny = (area > 0) & (area < MIN_LESION_FRACTION * frame.size * frame.size)
    for arr in (mask, *fields):
        arr[tiny] = 0


def _boundary_points(
    frame: Frame, anat: Anatomy, lungs: np.ndarray, side: np.ndarray, z: np.ndarray, phi: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where rays from each lung's centre at lateral-frame angle ``phi`` leave the lung."""
    cx = anat.lung_cx[side]
    cy = anat.lung_cy[z]
    dx = np.asarray(LATERAL_SIGN)[side] * np.cos(phi)
    dy = np.sin(phi)
    bx, by = ray_to_boundary(frame, lungs[side, z], cx, cy, dx, dy, reach=0.9)
    return bx, by, dx, dy


# ------------------------------------------------------------------------ COVID


def _covid_foci(rng: np.random.Generator, severity: int) -> dict[str, np.ndarray]:
    """Per-focus layout: lung side, height, angle around the lung, size and appearance.

    Heights follow a Beta skewed to the base; angles centre on posterolateral; more than
    half of the foci get a partner in the other lung at a similar height (bilateral).
    """
    n = int(rng.integers(*[(1, 3), (3, 6), (5, 9)][severity]))
    foci = {
        "side": rng.integers(0, 2, n),
        "tc": rng.beta(2.4, 1.2, n),
        "half": rng.uniform(0.1, 0.2, n) * (1.0 + 0.2 * severity),
        "phi": rng.normal(1.0, 0.9, n),
        "along": rng.uniform(0.12, 0.22, n) * (1.0 + 0.15 * severity),
        "depth": rng.uniform(0.08, 0.13, n) * (1.0 + 0.15 * severity),
    }
    twin = rng.random(n) < 0.6
    m = int(twin.sum())
    partner = {
        "side": 1 - foci["side"][twin],
        "tc": foci["tc"][twin] + rng.normal(0.0, 0.06, m),
        "half": foci["half"][twin] * rng.uniform(0.7, 1.0, m),
        "phi": foci["phi"][twin] + rng.normal(0.0, 0.4, m),
        "along": foci["along"][twin] * rng.uniform(0.6, 1.0, m),
        "depth": foci["depth"][twin] * rng.uniform(0.7, 1.0, m),
    }
    foci = {k: np.concatenate([v, partner[k]]) for k, v in foci.items()}
    n += m
    foci["tc"] = np.clip(foci["tc"], 0.06, 0.97)
    foci["phi"] = np.clip(foci["phi"], -1.9, 2.8)
    foci["level"] = rng.uniform(-620.0, -460.0, n)
    foci["crazy"] = (rng.random(n) < 0.35).astype(np.float64)
    foci["core"] = (rng.random(n) < 0.1 + 0.15 * severity).astype(np.float64)
    return foci


def covid_disease(
    frame: Frame, anat: Anatomy, rng: np.random.Generator, tex: np.random.Generator, size: float = 1.0
) -> Disease:
    """Bilateral, peripheral, posterior, lower-zone, multifocal ground glass; ``size`` scales each
    focus's in-plane extent (the random draws are the same at any size)."""
    severity = int(rng.choice(3, p=[0.3, 0.45, 0.25]))
    effusion = np.zeros(frame.shape, dtype=bool)
    if rng.random() < 0.05:
        effusion = pleural_effusion(frame, anat, rng, [RIGHT, LEFT])
    lungs = anat.lungs & ~effusion[None]
    any_lung = lungs[RIGHT] | lungs[LEFT]

    f = _covid_foci(rng, severity)
    f["along"], f["depth"] = f["along"] * size, f["depth"] * size
    n = f["side"].size
    z = np.clip(np.round(f["tc"] * frame.n_slices - 0.5).astype(int), 0, frame.n_slices - 1)
    bx, by, dx, dy = _boundary_points(frame, anat, lungs, f["side"], z, f["phi"])
    cx, cy = bx - 0.4 * f["depth"] * dx, by - 0.4 * f["depth"] * dy
    tangent = np.arctan2(dy, dx) + np.pi / 2

    # Each focus is an in-plane ellipse (long axis along the pleura) times a flat-topped
    # profile in z; alongside the summed occupancy, accumulate occupancy-weighted
    # attributes so overlapping foci blend their HU level, septal lines and cores.
    zprof = np.exp(-(((frame.t[None, :] - f["tc"][:, None]) / f["half"][:, None]) ** 4)).astype(np.float32)
    attrs = np.stack([np.ones(n), f["level"], f["crazy"], f["core"]]).astype(np.float32)
    acc = np.zeros((4, *frame.shape), dtype=np.float32)
    for k in range(n):
        on = np.flatnonzero(zprof[k] > 1e-3)
        if on.size == 0:
            continue
        zs = slice(on[0], on[-1] + 1)
        plane = wide(
            np.exp, -0.693 * ellipse_q(frame, cx[k], cy[k], f["along"][k], 1.6 * f["depth"][k], float(tangent[k]))
        )
        acc[:, zs] += (attrs[:, k, None] * zprof[k, zs])[:, :, None, None] * plane[None]
    total, *weighted = acc

    base = total * subpleural_weight(frame, any_lung, 0.09 + 0.03 * severity)
    grain = smooth_noise(tex, frame, 0.05, 0.12)  # ragged margins and patchy density, one field
    field = base + 0.3 * grain * smoothstep(base, 0.1, 0.4)
    mask = (field > 0.5) & any_lung
    alpha = smoothstep(field, 0.42, 0.6) * any_lung
    _clear_slivers(frame, mask, alpha)

    inv = 1.0 / np.maximum(total, 1e-6)
    hu = weighted[0] * inv + 45.0 * grain
    if f["crazy"].any():
        hu += weighted[1] * inv * _crazy_paving(frame, tex)
    core_level = uniform(rng, -200.0, -60.0)
    hu += smoothstep(field * weighted[2] * inv, 0.8, 1.0) * (core_level - hu)
    return Disease(alpha, hu, mask, np.zeros_like(alpha), effusion, uniform(rng, 5.0, 20.0))


def _crazy_paving(frame: Frame, tex: np.random.Generator) -> np.ndarray:
    """Thickened interlobular septa: a warped polygonal grid of bright lines (HU to add).

    The period never drops below three pixels so the grid is texture, not aliasing.
    """
    period = max(0.065, 3.0 * 2.0 / frame.size)
    ang = uniform(tex, 0.0, np.pi / 2)
    c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
    warp = 0.35 * smooth_noise(tex, frame, 0.12, 0.2)
    u = (frame.x[None, None, :] * c + frame.y[None, :, None] * s) / np.float32(period) + warp
    v = (frame.y[None, :, None] * c - frame.x[None, None, :] * s) / np.float32(period) - warp
    return 170.0 * np.maximum(_line_profile(u), _line_profile(v))


def _line_profile(u: np.ndarray) -> np.ndarray:
    """1 on integer values of ``u``, 0 beyond 0.2 from them (polynomial: no float32 underflow)."""
    d = np.abs(u - np.round(u)) * np.float32(5.0)
    return np.clip(1.0 - d * d, 0.0, 1.0) ** 2


# -------------------------------------------------------------------------- CAP

#: Lobe -> (side, probability). The lower lobes dominate, as in bacterial pneumonia.
_LOBES = {"RLL": (RIGHT, 0.32), "LLL": (LEFT, 0.24), "RML": (RIGHT, 0.14), "RUL": (RIGHT, 0.17), "LUL": (LEFT, 0.13)}


def _lobe_sector(lobe: str, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-slice angular range (lateral frame, around the hilum) and z range of a lobe.

    The oblique fissure is a plane, so in axial slices the lower lobe's anterior border
    sweeps forward toward the base and the upper lobe's posterior border sweeps back
    toward the apex.
    """
    if lobe in ("RLL", "LLL"):
        t0, t1 = uniform(rng, 0.22, 0.42), 1.2
        fissure = 0.7 - 1.9 * np.clip((t - t0) / (1.0 - t0), 0.0, 1.0)
        return fissure, np.full_like(t, np.pi), t0, t1
    if lobe == "RML":
        t0, t1 = uniform(rng, 0.38, 0.5), uniform(rng, 0.8, 0.95)
        return np.full_like(t, -np.pi), np.full_like(t, -0.35), t0, t1
    t0, t1 = -0.2, uniform(rng, 0.5, 0.72)  # RUL / LUL
    fissure = 1.6 - 1.3 * np.clip(t / t1, 0.0, 1.0)
    return np.full_like(t, -np.pi), fissure, t0, t1


def _consolidation_field(
    frame: Frame, anat: Anatomy, rng: np.random.Generator, lobe: str, segmental: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft lobe (or segment) occupancy ``[Z, H, W]``, plus its per-slice centre angle and z weight."""
    side, _ = _LOBES[lobe]
    p = anat.params
    lo, hi, t0, t1 = _lobe_sector(lobe, frame.t, rng)
    if segmental:
        width = hi - lo
        keep = uniform(rng, 0.4, 0.7)
        start = uniform(rng, 0.0, 1.0 - keep)
        lo, hi = lo + start * width, lo + (start + keep) * width
        span = t1 - t0
        t0, t1 = t0 + uniform(rng, 0.0, 0.2) * span, t1 - uniform(rng, 0.0, 0.2) * span
    hx, hy = LATERAL_SIGN[side] * p.hilum_x, p.hilum_y
    phi = lateral_angle(frame, hx, hy, side)[None]
    r_h = np.hypot(frame.x[None, :] - hx, frame.y[:, None] - hy)[None]
    zw = (smoothstep(frame.t, t0 - 0.03, t0 + 0.06) * (1.0 - smoothstep(frame.t, t1 - 0.06, t1 + 0.03))).astype(
        np.float32
    )
    ang = smoothstep(phi, zcol(lo), zcol(lo) + 0.3) * (1.0 - smoothstep(phi, zcol(hi) - 0.3, zcol(hi)))
    occupancy = 1.3 * ang * smoothstep(r_h, 0.05, 0.13) * zcol(zw)
    return occupancy * anat.lungs[side], (lo + hi) / 2, zw


def _bronchogram_alpha(
    frame: Frame, anat: Anatomy, rng: np.random.Generator, side: int, centre: np.ndarray, zw: np.ndarray
) -> np.ndarray:
    """Branching air tubes fanning out from the hilum along the consolidated wedge."""
    p = anat.params
    z = np.repeat(np.flatnonzero(zw > 0.05), 3)
    if z.size == 0:
        return np.zeros(frame.shape, dtype=np.float32)
    lateral = np.full(z.size, LATERAL_SIGN[side])
    gens = branching_tree(
        rng,
        z,
        lateral * p.hilum_x,
        np.full(z.size, p.hilum_y),
        centre[z] + rng.normal(0.0, 0.35, z.size),
        0.13 * anat.lung_scale[z],
        np.full(z.size, 0.03),
        lateral=lateral,
        n_gen=4,
        spread=0.35,
        drop=0.3,
        taper=0.8,
    )
    return np.minimum(render_marks(frame, line_marks(frame, Segments.join(gens)), 0.007), 1.0)


def _tree_in_bud(
    frame: Frame, anat: Anatomy, lungs: np.ndarray, rng: np.random.Generator, n_clusters: int
) -> np.ndarray:
    """Clusters of small peripheral nodules on short branches (occupancy, like the vessels)."""
    if n_clusters == 0:
        return np.zeros(frame.shape, dtype=np.float32)
    side = rng.integers(0, 2, n_clusters)
    tc = rng.uniform(0.2, 0.95, n_clusters)
    phi = rng.uniform(-1.6, 2.4, n_clusters)
    zc = np.clip(np.round(tc * frame.n_slices - 0.5).astype(int), 0, frame.n_slices - 1)
    bx, by, dx, dy = _boundary_points(frame, anat, lungs, side, zc, phi)
    cx, cy = bx - 0.07 * dx, by - 0.07 * dy
    marks: list[Marks] = []
    for k in range(n_clusters):
        zs = np.flatnonzero(np.abs(frame.t - tc[k]) < 0.1)
        for z in zs:
            m = int(rng.integers(6, 13))
            nx = cx[k] + rng.normal(0.0, 0.04, m)
            ny = cy[k] + rng.normal(0.0, 0.04, m)
            zz = np.full(m, z)
            marks.append(dot_marks(frame, zz, nx, ny, rng.uniform(0.022, 0.035, m)))
            stems = Segments(zz, np.full(m, cx[k]), np.full(m, cy[k]), nx, ny, np.full(m, 0.008))
            marks.append(line_marks(frame, stems))
    if not marks:
        return np.zeros(frame.shape, dtype=np.float32)
    return render_marks(frame, Marks.join(marks), 0.012)


def cap_disease(frame: Frame, anat: Anatomy, rng: np.random.Generator, tex: np.random.Generator) -> Disease:
    """Mostly unilateral lobar/segmental consolidation with bronchograms, nodules, effusion."""
    names = list(_LOBES)
    probs = np.array([_LOBES[k][1] for k in names])
    has_lobar = rng.random() < 0.88
    lobe = names[int(rng.choice(len(names), p=probs))]
    main_side = _LOBES[lobe][0] if has_lobar else int(rng.integers(0, 2))

    effusion = np.zeros(frame.shape, dtype=bool)
    if rng.random() < 0.3:
        sides = [RIGHT, LEFT] if rng.random() < 0.25 else [main_side]
        effusion = pleural_effusion(frame, anat, rng, sides)
    lungs = anat.lungs & ~effusion[None]
    any_lung = lungs[RIGHT] | lungs[LEFT]

    occupancy = np.zeros(frame.shape, dtype=np.float32)
    air = np.zeros(frame.shape, dtype=np.float32)
    if has_lobar:
        occ, centre, zw = _consolidation_field(frame, anat, rng, lobe, segmental=rng.random() < 0.5)
        occupancy = np.maximum(occupancy, occ)
        if rng.random() < 0.75:
            air = _bronchogram_alpha(frame, anat, rng, main_side, centre, zw)
        if rng.random() < 0.2:
            other = [k for k in names if _LOBES[k][0] != main_side]
            second = other[int(rng.integers(0, len(other)))]
            occupancy = np.maximum(occupancy, _consolidation_field(frame, anat, rng, second, segmental=True)[0])

    grain = smooth_noise(tex, frame, 0.06, 0.15)  # ragged margins and patchy density, one field
    field = occupancy + 0.28 * grain * smoothstep(occupancy, 0.1, 0.4)
    n_clusters = int(rng.poisson(0.8)) + (0 if has_lobar else 2)
    buds = _tree_in_bud(frame, anat, lungs, rng, n_clusters)
    mask = ((field > 0.5) | (buds > 0.4)) & any_lung
    alpha = np.maximum(smoothstep(field, 0.4, 0.6), smoothstep(buds, 0.3, 0.5)) * any_lung
    air *= alpha * mask
    _clear_slivers(frame, mask, alpha, air)

    level = uniform(rng, -60.0, 30.0)
    hu = level + 22.0 * grain
    return Disease(alpha, hu, mask, air, effusion, uniform(rng, 5.0, 20.0))


DISEASES = {"cap": cap_disease, "covid": covid_disease}
