"""The normal thorax of the CT phantom, and the drawing primitives the lesions reuse.

Every patient is drawn as a whole Z stack at once, on normalized coordinates: ``x`` and
``y`` run over [-1, 1] across the field of view (``x < 0`` is the image left = the
patient's right, ``y > 0`` is posterior) and ``t`` in (0, 1) runs from the apex to the
base. Because shapes live in these units and every random draw is independent of the
image size, a patient looks the same at 64 or 128 pixels. Speed comes from keeping
every step a handful of whole-stack numpy operations: ellipses are sums of an
``[Z, 1, W]`` and an ``[Z, H, 1]`` term, thin structures (vessels, bronchi, nodules)
are splatted as points and blurred once, and texture is a separable sum of Gaussian
bumps (a few small tensor contractions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Tissue HU levels shared by the anatomy and the lesion drawers.
AIR_HU = -1000.0
FAT_HU = -100.0
BLOOD_HU = 40.0
BONE_CORTEX_HU = 750.0
BONE_MARROW_HU = 280.0

#: Patient sides, in image order: the patient's right lung is drawn on the image left.
RIGHT, LEFT = 0, 1
#: Direction of "lateral" along x for each side (mirror factor for lateral-frame angles).
LATERAL_SIGN = (-1.0, 1.0)


# --------------------------------------------------------------------------- frame


@dataclass(frozen=True)
class Frame:
    """Pixel-centre coordinates of one patient's stack, in normalized units."""

    size: int
    n_slices: int
    x: np.ndarray  # float32 [W]
    y: np.ndarray  # float32 [H]
    t: np.ndarray  # float32 [Z]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.n_slices, self.size, self.size

    @property
    def px_per_unit(self) -> float:
        """Pixels per normalized unit (the field of view spans 2 units)."""
        return self.size / 2.0


def make_frame(size: int, n_slices: int) -> Frame:
    """Coordinates of the pixel centres; slice ``z`` sits at ``t = (z + 0.5) / Z``."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    t = ((np.arange(n_slices, dtype=np.float32) + 0.5) / n_slices).astype(np.float32)
    return Frame(size=size, n_slices=n_slices, x=c, y=c.copy(), t=t)


def zcol(v: float | np.ndarray) -> np.ndarray:
    """A scalar or per-slice ``[Z]`` parameter shaped to broadcast over ``[Z, H, W]``."""
    return np.asarray(v, dtype=np.float32).reshape(-1, 1, 1)


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw as a Python float, so float32 arrays stay float32 (NEP 50)."""
    return float(rng.uniform(lo, hi))


# ------------------------------------------------------------------- primitives


def ellipse_q(
    frame: Frame,
    cx: float | np.ndarray,
    cy: float | np.ndarray,
    rx: float | np.ndarray,
    ry: float | np.ndarray,
    angle: float = 0.0,
) -> np.ndarray:
    """Quadratic form of an ellipse (< 1 inside); parameters may vary per slice."""
    dx = frame.x[None, None, :] - zcol(cx)
    dy = frame.y[None, :, None] - zcol(cy)
    if angle == 0.0:
        return (dx / zcol(rx)) ** 2 + (dy / zcol(ry)) ** 2
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return ((dx * c + dy * s) / zcol(rx)) ** 2 + ((dy * c - dx * s) / zcol(ry)) ** 2


def wide(fn: np.ufunc, *args: np.ndarray | float) -> np.ndarray:
    """``fn(*args)`` evaluated in float64 and rounded once to float32: the same bits on every CPU.

    numpy sends float32 transcendental ufuncs (``arctan2``, ``sin`` ...) to CPU-specific
    kernels (SVML on AVX-512, its own polynomials on AVX2) that differ in the last bit, and
    a last-bit difference in an angle moves a shape edge by a pixel often enough to change a
    128 px phantom. The float64 kernels agree to within a float64 ulp, far below float32's,
    so their float32 rounding is the same on every kernel path. Used only where the float32
    kernels were seen to differ, so outputs that already agreed keep their bits.
    """
    return fn(*(np.asarray(a, dtype=np.float64) for a in args)).astype(np.float32)


def smoothstep(v: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, a smooth cubic in between (soft edges, no aliasing)."""
    s = np.subtract(v, lo, dtype=np.float32)
    s *= np.float32(1.0 / (hi - lo))
    np.clip(s, 0.0, 1.0, out=s)
    out = np.multiply(s, np.float32(-2.0))
    out += np.float32(3.0)
    out *= s
    out *= s
    return out


def _rbf_basis(coords: np.ndarray, spacing: float) -> np.ndarray:
    """Gaussian bumps every ``spacing`` units, normalized so the field has unit variance."""
    centers = np.arange(-1.3, 1.3 + spacing / 2, spacing, dtype=np.float64)
    g = np.exp(-0.5 * ((coords[:, None].astype(np.float64) - centers[None, :]) / spacing) ** 2)
    g[g < 1e-4] = 0.0  # far tails only add float32 denormals, which are very slow
    return (g / np.sqrt((g * g).sum(axis=1, keepdims=True))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, frame: Frame, scale: float, z_scale: float | None) -> np.ndarray:
    """Unit-variance random field, correlated over ``scale`` in-plane and ``z_scale`` in t.

    ``z_scale=None`` makes slices independent. The number of random coefficients does
    not depend on the image size, so the field is the same pattern at any resolution.
    """
    gx = _rbf_basis(frame.x, scale)
    gy = _rbf_basis(frame.y, scale)
    gz = np.eye(frame.n_slices, dtype=np.float32) if z_scale is None else _rbf_basis(frame.t, z_scale)
    coef = rng.standard_normal((gz.shape[1], gy.shape[1], gx.shape[1]), dtype=np.float32)
    # numpy's own einsum loops, not BLAS: multithreaded BLAS on these small products can
    # slow down a hundredfold when the machine is busy (its threads spin for free cores).
    coef = np.einsum("za,abc->zbc", gz, coef)  # contract the small axis first: few flops
    return np.einsum("yb,zbw->zyw", gy, np.einsum("zbc,wc->zbw", coef, gx))


def splat(frame: Frame, z: np.ndarray, xs: np.ndarray, ys: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Add point weights into a ``[Z, H, W]`` stack with bilinear sub-pixel placement."""
    n = frame.size
    fx = (xs + 1.0) * (n / 2.0) - 0.5
    fy = (ys + 1.0) * (n / 2.0) - 0.5
    x0 = np.floor(fx)
    y0 = np.floor(fy)
    ax, ay = fx - x0, fy - y0
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    ix = np.concatenate([x0, x0 + 1, x0, x0 + 1])
    iy = np.concatenate([y0, y0, y0 + 1, y0 + 1])
    iz = np.tile(np.asarray(z, dtype=np.int64), 4)
    wt = np.concatenate([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay]) * np.tile(w, 4)
    ok = (ix >= 0) & (ix < n) & (iy >= 0) & (iy < n)
    flat = (iz[ok] * n + iy[ok]) * n + ix[ok]
    out = np.bincount(flat, weights=wt[ok], minlength=frame.n_slices * n * n)
    return out.astype(np.float32).reshape(frame.shape)


@dataclass
class Marks:
    """Points to splat: slice index, position (normalized) and the area each carries (px^2)."""

    z: np.ndarray
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray

    @staticmethod
    def join(parts: list[Marks]) -> Marks:
        return Marks(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("z", "x", "y", "w")))


@dataclass
class Segments:
    """Straight tube pieces on given slices; ``w`` is each tube's width (normalized units)."""

    z: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    w: np.ndarray

    @staticmethod
    def join(parts: list[Segments]) -> Segments:
        return Segments(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("z", "x0", "y0", "x1", "y1", "w")))


def line_marks(frame: Frame, seg: Segments) -> Marks:
    """Sample tubes every half pixel; each sample carries the area (px^2) of tube it stands for.

    ``seg.w`` is the tube's width in normalized units. Splatting and blurring conserve
    area, so a tube wider than the blur saturates at 1 across its width and a thin one
    shows the partial-volume contrast it would have at this pixel size: the same anatomy
    at every image size.
    """
    step_px = 0.5
    length_px = np.hypot(seg.x1 - seg.x0, seg.y1 - seg.y0) * frame.px_per_unit
    counts = np.maximum(1, np.ceil(length_px / step_px).astype(np.int64))
    owner = np.repeat(np.arange(counts.size), counts)
    starts = np.cumsum(counts) - counts
    frac = (np.arange(owner.size) - starts[owner] + 0.5) / counts[owner]
    spacing_px = length_px[owner] / counts[owner]
    return Marks(
        z=seg.z[owner],
        x=seg.x0[owner] + frac * (seg.x1 - seg.x0)[owner],
        y=seg.y0[owner] + frac * (seg.y1 - seg.y0)[owner],
        w=seg.w[owner] * frame.px_per_unit * spacing_px,
    )


def dot_marks(frame: Frame, z: np.ndarray, x: np.ndarray, y: np.ndarray, radius: np.ndarray) -> Marks:
    """Round dots of ``radius`` (normalized units), each carrying its area in px^2."""
    return Marks(z=z, x=x, y=y, w=np.pi * (radius * frame.px_per_unit) ** 2)


def render_marks(frame: Frame, marks: Marks, sigma: float) -> np.ndarray:
    """Splat and blur with a Gaussian of ``sigma`` normalized units (per slice, not across z).

    The result is a per-pixel occupancy: about 1 inside structures wider than the blur.
    """
    img = splat(frame, marks.z, marks.x, marks.y, marks.w)
    s = sigma * frame.px_per_unit
    if s < 0.35:  # narrower than the bilinear splat itself: blurring would change nothing visible
        return img
    return ndimage.gaussian_filter(img, sigma=(0.0, s, s), truncate=3.0)


def branching_tree(
    rng: np.random.Generator,
    z: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    angle: np.ndarray,
    length: np.ndarray,
    width: np.ndarray,
    *,
    lateral: np.ndarray,
    n_gen: int,
    spread: float,
    drop: float,
    taper: float = 0.6,
) -> list[Segments]:
    """Grow binary trees from root segments, one vectorized step per generation.

    Angles are in a lateral frame (0 = lateral, +pi/2 = posterior) mirrored by
    ``lateral`` (the x sign of "lateral"), so one set of angle rules serves both lungs.
    Randomly dropped segments model branches leaving the slice plane; their children
    still grow, which breaks the tree into the dots and dashes an axial slice shows.
    Returns one :class:`Segments` per generation (trunks first).
    """
    parts = []
    for gen in range(n_gen):
        n = x.size
        bend = angle + rng.normal(0.0, 0.12, n)
        x1 = x + lateral * length * np.cos(bend)
        y1 = y + length * np.sin(bend)
        keep = rng.random(n) >= (drop if gen else drop * 0.5)
        parts.append(Segments(z[keep], x[keep], y[keep], x1[keep], y1[keep], width[keep]))
        side = np.tile([-1.0, 1.0], n)
        angle = np.repeat(bend, 2) + side * rng.uniform(0.6, 1.4, 2 * n) * spread
        length = np.repeat(length, 2) * rng.uniform(0.6, 0.85, 2 * n)
        width = np.repeat(width, 2) * taper
        z, x, y, lateral = np.repeat(z, 2), np.repeat(x1, 2), np.repeat(y1, 2), np.repeat(lateral, 2)
    return parts


def lateral_angle(frame: Frame, cx: float, cy: float, side: int) -> np.ndarray:
    """Angle ``[H, W]`` around (cx, cy) in the lateral frame of ``side`` (0 lateral, +pi/2 posterior)."""
    dx = (frame.x[None, :] - np.float32(cx)) * np.float32(LATERAL_SIGN[side])
    dy = frame.y[:, None] - np.float32(cy)
    return wide(np.arctan2, dy, dx)


def ray_to_boundary(
    frame: Frame, mask2d: np.ndarray, cx: np.ndarray, cy: np.ndarray, dx: np.ndarray, dy: np.ndarray, reach: float
) -> tuple[np.ndarray, np.ndarray]:
    """Last point of ``mask2d`` ([K, H, W]) along each ray from (cx, cy); the centre if none."""
    steps = np.linspace(0.0, reach, 64, dtype=np.float32)
    px = cx[:, None] + dx[:, None] * steps[None]
    py = cy[:, None] + dy[:, None] * steps[None]
    ix = np.clip(((px + 1.0) * frame.px_per_unit).astype(np.int64), 0, frame.size - 1)
    iy = np.clip(((py + 1.0) * frame.px_per_unit).astype(np.int64), 0, frame.size - 1)
    inside = mask2d[np.arange(cx.size)[:, None], iy, ix]
    last = np.where(inside.any(axis=1), steps.size - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
    k = np.arange(cx.size)
    return px[k, last], py[k, last]


# --------------------------------------------------------------------- thorax


@dataclass(frozen=True)
class Thorax:
    """Per-patient shape parameters of the normal chest (normalized units)."""

    body_cx: float
    body_cy: float
    body_ax: float
    body_ay: float
    back_power: float  # superellipse exponent of the posterior half (a flatter back)
    fat: float  # subcutaneous fat thickness, fraction of the body radius
    wall: float  # muscle + rib layer inside the fat, fraction of the body radius
    soft_hu: float
    fat_hu: float
    lung_hu: float
    lung_x: float  # |x| of each lung's centre
    lung_y: float
    lung_rx: float
    lung_ry: float
    lung_size: tuple[float, float]  # right, left multipliers
    hilum_x: float
    hilum_y: float
    med_x: float
    med_w: float
    heart_x: float
    heart_y: float
    heart_rx: float
    heart_ry: float
    heart_angle: float
    heart_t0: float
    spine_y: float
    dome_t0: float
    rib_count: int
    rib_phase: float
    rib_wobble: float


def draw_thorax_params(rng: np.random.Generator) -> Thorax:
    """Random but plausible adult chest proportions (patient size and shape vary)."""
    ax = uniform(rng, 0.78, 0.92)
    ay = ax * uniform(rng, 0.66, 0.78)
    cy = uniform(rng, 0.0, 0.06)
    return Thorax(
        body_cx=uniform(rng, -0.02, 0.02),
        body_cy=cy,
        body_ax=ax,
        body_ay=ay,
        back_power=uniform(rng, 2.6, 3.4),
        fat=uniform(rng, 0.05, 0.14),
        wall=uniform(rng, 0.07, 0.11),
        soft_hu=uniform(rng, 35.0, 55.0),
        fat_hu=FAT_HU + uniform(rng, -12.0, 12.0),
        lung_hu=uniform(rng, -875.0, -845.0),
        lung_x=ax * uniform(rng, 0.42, 0.47),
        lung_y=cy + uniform(rng, 0.0, 0.05),
        lung_rx=ax * uniform(rng, 0.40, 0.46),
        lung_ry=ay * uniform(rng, 0.84, 0.95),
        lung_size=(uniform(rng, 0.95, 1.05), uniform(rng, 0.9, 1.0)),
        hilum_x=uniform(rng, 0.17, 0.23),
        hilum_y=cy - uniform(rng, 0.0, 0.06),
        med_x=uniform(rng, 0.0, 0.04),
        med_w=uniform(rng, 0.11, 0.15),
        heart_x=uniform(rng, 0.07, 0.15),
        heart_y=cy - ay * uniform(rng, 0.22, 0.35),
        heart_rx=uniform(rng, 0.27, 0.34),
        heart_ry=uniform(rng, 0.19, 0.25),
        heart_angle=-uniform(rng, 0.35, 0.7),
        heart_t0=uniform(rng, 0.32, 0.48),
        spine_y=cy + ay * uniform(rng, 0.24, 0.34),
        dome_t0=uniform(rng, 0.78, 0.9),
        rib_count=int(rng.integers(11, 15)),
        rib_phase=uniform(rng, 0.0, 1.0),
        rib_wobble=uniform(rng, 0.05, 0.2),
    )


@dataclass
class Anatomy:
    """The drawn normal chest: HU stack (lung parenchyma included), lungs and geometry."""

    hu: np.ndarray  # float32 [Z, H, W]
    lungs: np.ndarray  # bool [2, Z, H, W], index RIGHT / LEFT
    params: Thorax
    lung_cx: np.ndarray  # float32 [2]: x of each lung's centre
    lung_cy: np.ndarray  # float32 [Z]: y of the lungs' centre per slice
    lung_scale: np.ndarray  # float32 [Z]: lung size relative to the base


def lung_scale(t: np.ndarray) -> np.ndarray:
    """Lungs are small at the apex and reach full size in the lower third."""
    return (0.5 + 0.5 * np.sin(0.5 * np.pi * np.minimum(t / 0.75, 1.0))).astype(np.float32)


def _body_radius(frame: Frame, p: Thorax) -> np.ndarray:
    """Superellipse radius ``[H, W]`` of the body outline (1 at the skin), flatter at the back."""
    ux = np.abs(frame.x - p.body_cx) / p.body_ax
    vy = (frame.y - p.body_cy) / p.body_ay
    power = np.where(vy > 0, p.back_power, 2.0)[:, None]
    return (ux[None, :] ** power + np.abs(vy)[:, None] ** power) ** (1.0 / power)


def _paint(hu: np.ndarray, where: np.ndarray, value: float | np.ndarray) -> None:
    """Overwrite ``hu`` with ``value`` inside ``where`` (in place, broadcasting)."""
    np.copyto(hu, np.asarray(value, dtype=np.float32), where=np.broadcast_to(where, hu.shape))


def _draw_wall(frame: Frame, p: Thorax, r: np.ndarray, theta: np.ndarray, hu: np.ndarray) -> None:
    """Skin, subcutaneous fat, muscle, the rib ring and the sternum around the thoracic cavity."""
    _paint(hu, r < 1.0, p.soft_hu - 10.0)
    _paint(hu, r < 0.985, p.fat_hu)
    _paint(hu, r < 1.0 - p.fat, p.soft_hu)
    r_in = 1.0 - p.fat - p.wall
    phase = p.rib_phase + 2.2 * frame.t
    q = p.rib_count * theta[None] / (2 * np.pi) + zcol(phase) + p.rib_wobble * wide(np.sin, 2 * theta + 1.0)[None]
    dq = q - np.round(q)
    rib_q = ((r[None] - (r_in + 0.42 * p.wall)) / (0.3 * p.wall)) ** 2 + (dq / 0.26) ** 2
    sin_theta = wide(np.sin, theta)
    front = np.abs(sin_theta + 1.0) < 0.06  # sternum gap at the anterior midline
    back = np.abs(sin_theta - 1.0) < 0.08  # the spine takes the posterior midline
    rib = (rib_q < 1.0) & ~(front | back)[None]
    _paint(hu, rib, BONE_CORTEX_HU)
    _paint(hu, rib & (rib_q < 0.35), BONE_MARROW_HU)
    sternum_y = p.body_cy - p.body_ay * (1.0 - p.fat - 0.45 * p.wall)
    _paint(hu, ellipse_q(frame, p.body_cx, sternum_y, 0.06, 0.035) < 1.0, 0.7 * BONE_CORTEX_HU)


def _draw_mediastinum(frame: Frame, p: Thorax, hu: np.ndarray) -> np.ndarray:
    """Mediastinal fat, heart, great vessels and airway; returns where lungs cannot be."""
    t = frame.t
    cav_top = p.body_cy - p.body_ay * (1.0 - p.fat - p.wall)
    med = ellipse_q(frame, p.med_x, p.body_cy - 0.15 * p.body_ay, p.med_w + 0.04 * t, 0.8 * p.body_ay) < 1.0
    _paint(hu, med, p.fat_hu + 15.0)

    grow = np.sqrt(np.clip((t - p.heart_t0) / 0.3, 0.0, 1.0)).astype(np.float32)
    heart_q = ellipse_q(frame, p.heart_x, p.heart_y, p.heart_rx * grow + 1e-3, p.heart_ry * grow + 1e-3, p.heart_angle)
    _paint(hu, heart_q < 1.25, p.fat_hu + 10.0)
    _paint(hu, heart_q < 1.0, BLOOD_HU)

    asc = (t > 0.15) & (t < p.heart_t0 + 0.1)
    asc_q = ellipse_q(frame, -0.03, cav_top + 0.22, np.where(asc, 0.075, 1e-3), np.where(asc, 0.075, 1e-3))
    _paint(hu, asc_q < 1.0, BLOOD_HU)
    pa = (t > 0.3) & (t < p.heart_t0 + 0.08)
    pa_q = ellipse_q(frame, 0.1, cav_top + 0.2, np.where(pa, 0.08, 1e-3), np.where(pa, 0.06, 1e-3))
    _paint(hu, pa_q < 1.0, BLOOD_HU)
    desc_q = ellipse_q(frame, 0.1, p.spine_y - 0.13, 0.06, 0.06)
    _paint(hu, desc_q < 1.0, BLOOD_HU)

    _draw_airway(frame, p, hu)
    return med | (heart_q < 1.3) | (asc_q < 1.1) | (pa_q < 1.1) | (desc_q < 1.2)


def _draw_airway(frame: Frame, p: Thorax, hu: np.ndarray) -> None:
    """Trachea in the upper slices, splitting into main bronchi that drift toward the hila."""
    t = frame.t
    below_carina = np.clip((t - 0.3) / 0.18, 0.0, 1.0)
    trachea = t < 0.3
    radius = np.where(t < 0.5, np.where(trachea, 0.055, 0.035), 1e-3)  # gone below the hila
    for sign in (-1.0, 1.0):  # one circle each side; they coincide while still the trachea
        x = sign * (0.03 + 0.12 * below_carina) * (~trachea)
        air_q = ellipse_q(frame, x, p.spine_y - 0.2 + 0.05 * below_carina, radius, radius)
        _paint(hu, air_q < 1.44, p.soft_hu)  # cartilage wall
        _paint(hu, air_q < 1.0, AIR_HU)


def _draw_spine(frame: Frame, p: Thorax, hu: np.ndarray) -> np.ndarray:
    """Vertebra (body, canal, posterior arch, spinous process) in paraspinal muscle."""
    sy = p.spine_y
    column = ellipse_q(frame, 0.0, sy + 0.14, 0.17, 0.26) < 1.0
    _paint(hu, column, p.soft_hu)
    body_q = ellipse_q(frame, 0.0, sy, 0.1, 0.09)
    _paint(hu, body_q < 1.0, BONE_CORTEX_HU)
    _paint(hu, body_q < 0.7, BONE_MARROW_HU)
    arch = (ellipse_q(frame, 0.0, sy + 0.16, 0.12, 0.05) < 1.0) | (ellipse_q(frame, 0.0, sy + 0.25, 0.022, 0.08) < 1.0)
    _paint(hu, arch, BONE_CORTEX_HU * 0.8)
    _paint(hu, ellipse_q(frame, 0.0, sy + 0.14, 0.045, 0.04) < 1.0, 15.0)
    return column | (body_q < 1.3)


def _lung_shapes(frame: Frame, p: Thorax, r: np.ndarray, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both lungs ``[2, Z, H, W]`` (cavity minus mediastinum and diaphragm domes) and their centres' y."""
    s = lung_scale(frame.t)
    cy = (p.lung_y + 0.12 * (1.0 - s)).astype(np.float32)
    cavity = (r < 1.0 - p.fat - p.wall - 0.01)[None]
    dome = np.clip((frame.t - p.dome_t0) / 0.2, 0.0, 1.0).astype(np.float32)
    lungs = []
    for side in (RIGHT, LEFT):
        k = p.lung_size[side]
        cx = LATERAL_SIGN[side] * p.lung_x
        dx = np.abs(frame.x[None, None, :] - cx) / zcol(p.lung_rx * s * k)
        dy = np.abs(frame.y[None, :, None] - zcol(cy)) / zcol(p.lung_ry * s * k)
        inside = dx * dx + dy * dy < 1.0
        grow = dome if side == RIGHT else np.clip(dome - 0.4, 0.0, 1.0)  # the liver rises higher
        radius = np.where(grow > 0, (0.14 if side == RIGHT else 0.1) + 0.18 * grow, 1e-3)
        dome_q = ellipse_q(frame, cx * 0.8, cy - 0.1, radius, 1.05 * radius)
        lungs.append(inside & cavity & ~blocked & (dome_q > 1.0))
    return np.stack(lungs), cy


def draw_thorax(frame: Frame, p: Thorax, texture: np.ndarray) -> Anatomy:
    """Paint the chest from the skin inwards; the lungs come last, on top of the wall."""
    hu = np.full(frame.shape, AIR_HU, dtype=np.float32)
    r = _body_radius(frame, p)
    theta = wide(np.arctan2, frame.y[:, None] - p.body_cy, frame.x[None, :] - p.body_cx)
    _draw_wall(frame, p, r, theta, hu)
    _paint(hu, (r < 1.0 - p.fat - p.wall)[None], p.soft_hu)
    blocked = _draw_mediastinum(frame, p, hu) | _draw_spine(frame, p, hu)
    lungs, cy = _lung_shapes(frame, p, r, blocked)
    parenchyma = p.lung_hu + 50.0 * frame.y[None, :, None] + 14.0 * texture  # denser posteriorly (gravity)
    _paint(hu, lungs[RIGHT] | lungs[LEFT], parenchyma)
    lung_cx = np.array([LATERAL_SIGN[RIGHT] * p.lung_x, LATERAL_SIGN[LEFT] * p.lung_x], dtype=np.float32)
    return Anatomy(hu=hu, lungs=lungs, params=p, lung_cx=lung_cx, lung_cy=cy, lung_scale=lung_scale(frame.t))


# -------------------------------------------------------------------- vessels

#: Blur widths (normalized units) of central vessels and of small peripheral ones.
VESSEL_SIGMA_WIDE = 0.012
VESSEL_SIGMA_THIN = 0.005


def vessel_alpha(frame: Frame, anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels: branching trees from each hilum plus scattered dots, thinner outward.

    Returns a blend weight in [0, 1] toward blood HU, restricted to the lungs. Widths are
    physical (about 4 mm near the hilum, 1 mm at the tips; about 5% of the lung area), so
    at 64 px most vessels are partial-volume dashes, as they would be. A fresh tree is
    grown per slice (slices are about 2 cm apart, so vessels are not traced between them).
    """
    p = anat.params
    Z = frame.n_slices
    n_trunks = 4
    z = np.repeat(np.arange(Z), 2 * n_trunks)
    side = np.tile(np.repeat([RIGHT, LEFT], n_trunks), Z)
    lateral = np.asarray(LATERAL_SIGN)[side]
    scale = anat.lung_scale[z] * np.asarray(p.lung_size)[side]
    root_x = anat.lung_cx[side] - lateral * 0.55 * p.lung_rx * scale
    gens = branching_tree(
        rng,
        z,
        root_x + rng.normal(0.0, 0.01, z.size),
        anat.lung_cy[z] - 0.04 + rng.normal(0.0, 0.03, z.size),
        np.tile(np.linspace(-1.6, 1.9, n_trunks), 2 * Z) + rng.normal(0.0, 0.25, z.size),
        0.14 * scale * rng.uniform(0.8, 1.2, z.size),
        np.full(z.size, 0.025),
        lateral=lateral,
        n_gen=5,
        spread=0.42,
        drop=0.55,
        taper=0.7,
    )
    n_dots = 24
    dz = np.repeat(np.arange(Z), 2 * n_dots)
    dside = np.tile(np.repeat([RIGHT, LEFT], n_dots), Z)
    rad = np.sqrt(rng.random(dz.size))
    ang = rng.uniform(0.0, 2 * np.pi, dz.size)
    dscale = anat.lung_scale[dz] * np.asarray(p.lung_size)[dside]
    dx = anat.lung_cx[dside] + rad * np.cos(ang) * p.lung_rx * dscale
    dy = anat.lung_cy[dz] + rad * np.sin(ang) * p.lung_ry * dscale
    dots = dot_marks(frame, dz, dx, dy, rng.uniform(0.003, 0.009, dz.size) * (1.0 - 0.6 * rad))
    wide = render_marks(frame, line_marks(frame, gens[0]), VESSEL_SIGMA_WIDE)
    thin = render_marks(frame, Marks.join([line_marks(frame, Segments.join(gens[1:])), dots]), VESSEL_SIGMA_THIN)
    return np.minimum(wide + thin, 1.0) * (anat.lungs[RIGHT] | anat.lungs[LEFT])
