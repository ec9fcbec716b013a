"""Dataset folder -> ``SliceSet``: decode once, normalize, resize, cache.

``load_domain`` is the one entry point the harness uses; it accepts a dataset folder or
``"phantom:cap"`` / ``"phantom:covid"``. A phantom is exported to NIfTI once (through
:mod:`fewshot_transfer.data.export`) and read back with :func:`load_dataset`, so the
default benchmark exercises the same reader as a real dataset.

Normalization: "hu" images go through :func:`hu_to_unit` (lung window, [0, 1]);
"windowed-uint8" images are mapped back to HU with the dataset's ``window``
(``v / 255 * (hi - lo) + lo``) and then through the same function, so data windowed to a
different window still lands on the common scale.

Resizing: every slice becomes ``size x size`` — images bilinear with antialiasing (a
512 -> 64 downscale must not alias), masks nearest-neighbour. Non-square slices are
stretched (the aspect ratio changes; ``spacing`` records the new row/column spacing,
``spacing * original / size``). Slices already ``size x size`` are left untouched.

Original resolution: every loaded row keeps its index (``SliceSet.origin``), and the
dataset's ``meta`` records per row its manifest line and z index and per manifest row its
original shape and spacing, so :func:`native_slices` can read the original masks of a few
rows back (the harness does it for the test set only; the other pools never need them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fewshot_transfer.data import cache
from fewshot_transfer.data.dataset_format import (
    DATASET_JSON,
    MANIFEST_CSV,
    DatasetSpec,
    ManifestRow,
    check_files,
    read_manifest,
    read_spec,
)
from fewshot_transfer.data.errors import DatasetError, DatasetWarning, IntensityConventionWarning
from fewshot_transfer.data.readers import read_image, read_label
from fewshot_transfer.data.slices import NativeSlice, SliceSet, hu_to_unit
from fewshot_transfer.plan import DataPlan

log = logging.getLogger(__name__)

#: Part of every cache key and fingerprint; bump when decoding changes the arrays produced.
LOADER_VERSION = 1
#: ``load_domain``'s phantom settings and their defaults.
PHANTOM_DEFAULTS: dict[str, Any] = {
    "n_patients": 20,
    "n_slices": 12,
    "seed": 0,
    "profile": None,
    "effusion_as_lesion": False,
}
_WARNING_KINDS: dict[str, type[Warning]] = {"intensity": IntensityConventionWarning, "dataset": DatasetWarning}


def load_dataset(
    path: Path | str,
    *,
    size: int = 64,
    cache_dir: Path | str | None = None,
    name: str | None = None,
) -> SliceSet:
    """Load a dataset folder as ``size x size`` slices, from the cache when nothing changed.

    ``cache_dir`` defaults to :func:`cache.default_cache_dir`. ``name`` overrides
    dataset.json's name in the returned SliceSet. Raises :class:`DatasetError` for any
    problem with the folder; nothing is cached unless every row decoded.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise DatasetError(f"size {size!r} is not a positive integer; give the slice size in pixels, e.g. 64")
    root = Path(path).expanduser()
    spec = read_spec(root)
    rows = read_manifest(root)
    stats = check_files(root, rows)
    files = sorted(stats)
    settings = {"size": size, "loader": LOADER_VERSION}
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    key = cache.cache_key(root, stats, settings)
    data = cache.load_cached(cdir, key)
    if data is not None and "slices" not in data.meta:
        data = None  # an entry written before rows kept their origin: decode again (same arrays)
    if data is None:
        start = time.perf_counter()
        data = _decode(root, spec, rows, size=size)
        data = replace(data, fingerprint=cache.content_fingerprint(root, files, settings))
        data = cache.store(cdir, key, data)
        log.info(
            "decoded %s: %d slices from %d manifest rows in %.1fs",
            root,
            len(data),
            len(rows),
            time.perf_counter() - start,
        )
    else:
        for item in data.meta.get("warnings", []):
            _emit(item["message"], item.get("kind", "dataset"))
        log.debug("loaded %s from cache %s", root, cache.entry_path(cdir, key))
    extra: dict = {"source": str(root.resolve()), "dataset": spec.to_json()}
    if any(r.site for r in rows):
        extra["sites"] = site_counts(rows, data.meta)
    return replace(
        data,
        name=name or spec.name,
        meta={**data.meta, **extra},
        origin=np.arange(len(data), dtype=np.int64),
    )


def site_counts(rows: list[ManifestRow], meta: dict) -> dict[str, dict[str, int]]:
    """``{site: {"slices": n, "patients": m}}`` over the manifest's ``site`` column (``data info``, provenance)."""
    row_of = meta.get("slices", {}).get("row")
    picked = [rows[int(i)] for i in row_of] if row_of is not None else rows
    out: dict[str, dict[str, int]] = {}
    for site in sorted({r.site for r in picked}):
        mine = [r for r in picked if r.site == site]
        out[site] = {"slices": len(mine), "patients": len({r.patient for r in mine})}
    return out


def label_origin(data: SliceSet) -> str:
    """Who made the domain's labels: "manual", "model", or "manual+model" for a union of both kinds."""
    meta = data.meta or {}
    parts = meta.get("combined") or [meta]
    found = {str(p.get("dataset", {}).get("label_origin", "manual")) for p in parts}
    return "+".join(sorted(found))


def native_slices(data: SliceSet) -> tuple[NativeSlice, ...] | None:
    """The original-resolution lesion masks and pixel spacings of ``data``'s rows.

    ``data`` is a dataset from :func:`load_dataset` or a subset of one (its ``origin`` says
    which rows). A row that was already ``size x size`` is its own original (the loader did
    not resize it): its mask and spacing are reused, bit for bit. The others are read again
    from the dataset folder, through the same reader and label check as the first load.
    Unlabeled rows get an all-zero mask of their original shape. Returns None when ``data``
    does not come from a dataset folder (hand-built sets, concatenations).
    """
    meta = data.meta or {}
    if data.origin is None or "slices" not in meta or "rows" not in meta or not meta.get("source"):
        return None
    root = Path(meta["source"])
    row_of = meta["slices"]["row"]
    z_of = meta["slices"]["z"]
    shapes = meta["rows"]["shape"]
    spacings = meta["rows"]["spacing"]
    rows: list[ManifestRow] | None = None
    decoder: _Decoder | None = None
    out: list[NativeSlice] = []
    for i, o in enumerate(data.origin.tolist()):
        r = int(row_of[o])
        shape = (int(shapes[r][0]), int(shapes[r][1]))
        if shape == data.shape:
            out.append(NativeSlice(data.masks[i], (float(data.spacing[i, 0]), float(data.spacing[i, 1]))))
            continue
        sp = spacings[r]
        spacing = (float(sp[0]), float(sp[1])) if sp is not None else (float("nan"), float("nan"))
        if not data.labeled[i]:
            out.append(NativeSlice(np.zeros(shape, np.uint8), spacing))
            continue
        if decoder is None:
            rows = read_manifest(root)
            decoder = _Decoder(root, read_spec(root))
        assert rows is not None
        mask = decoder.lesion(rows[r].mask)[int(z_of[o])]
        if mask.shape != shape:
            raise DatasetError(
                f"{root / rows[r].mask}: mask is {mask.shape[0]}x{mask.shape[1]} but the dataset was loaded with "
                f"{shape[0]}x{shape[1]}; the folder changed since it was loaded, load it again"
            )
        out.append(NativeSlice(mask, spacing))
    return tuple(out)


def load_domain(
    spec: str,
    *,
    size: int,
    cache_dir: Path | str | None = None,
    phantom: dict | None = None,
) -> SliceSet:
    """A benchmark domain: ``"phantom:cap"``, ``"phantom:covid"`` or a dataset folder path.

    ``phantom`` (only for phantom specs) may set ``n_patients``, ``n_slices``, ``seed``,
    ``profile`` (a dict of ScannerProfile field overrides, or a ScannerProfile) and
    ``effusion_as_lesion``; see :data:`PHANTOM_DEFAULTS`. The phantom is generated at
    ``size``, exported once under ``cache_dir/phantoms/<settings hash>/`` and loaded from
    there; later calls with the same settings reuse the export and the decoded cache (a
    damaged export is generated again). ``phantom`` is ignored for folder specs.

    A phantom spec may carry settings after ``?`` (positive-control scenarios, e.g.
    ``"phantom:covid?seed=100&noise_sigma_hu=120&hu_offset=150"``): phantom options
    (``seed``, ``n_patients``, ...) override ``phantom``'s, the rest are ScannerProfile fields.

    A comma list (``"datasets/msd-lung/dataset,phantom:cap"``) is the union of its domains,
    see :func:`combine_domains`.
    """
    text = str(spec).strip()
    if "," in text and not Path(text).expanduser().exists():
        parts = [part.strip() for part in text.split(",") if part.strip()]
        return combine_domains([load_domain(part, size=size, cache_dir=cache_dir, phantom=phantom) for part in parts])
    if text.startswith("phantom:"):
        domain, options = parse_phantom_spec(text, phantom or {})
        return _load_phantom(domain, size=size, cache_dir=cache_dir, options=options)
    path = Path(text).expanduser()
    if not path.exists():
        hint = f'; did you mean "phantom:{text}"?' if text in ("cap", "covid") else ""
        raise DatasetError(
            f'domain {text!r} is neither "phantom:cap" / "phantom:covid" nor an existing dataset folder{hint}'
        )
    return load_dataset(path, size=size, cache_dir=cache_dir)


def load_run_domain(data: DataPlan, role: str) -> SliceSet:
    """A run's ``source`` or ``target`` domain as its plan's ``[data]`` states it."""
    ph = data.phantom
    phantom = {
        "n_patients": int(ph["source_patients" if role == "source" else "target_patients"]),
        "n_slices": int(ph["slices_per_patient"]),
        "seed": int(ph["seed"]),
    }
    cache_dir = Path(data.cache_dir) if data.cache_dir else None
    return load_domain(getattr(data, role), size=data.size, cache_dir=cache_dir, phantom=phantom)


def decoded_in_cache(data: DataPlan, role: str = "target") -> bool:
    """Whether a run's dataset folder is in the decoded cache at its ``data.size``, so loading it
    decodes (and resizes, with torch) nothing; False for phantoms and unions of domains."""
    path = Path(getattr(data, role)).expanduser()
    if not (path / DATASET_JSON).is_file():
        return False
    try:
        stats = check_files(path, read_manifest(path))
    except DatasetError:
        return False
    cdir = Path(data.cache_dir).expanduser() if data.cache_dir else cache.default_cache_dir()
    key = cache.cache_key(path, stats, {"size": data.size, "loader": LOADER_VERSION})
    return cache.entry_path(cdir, key).is_file()


def combine_domains(parts: list[SliceSet]) -> SliceSet:
    """The union of several loaded domains as one SliceSet.

    Patient ids become ``"<dataset>:<patient>"``, so two datasets that both number their
    cases ``case_001`` stay two patients and patient-disjoint splits stay disjoint; each row
    keeps its dataset of origin (``SliceSet.dataset``, shown by ``ftbench data info``).
    Two parts with the same name get ``#2``, ``#3``. Original-resolution masks are not
    carried over (``native_slices`` returns None), so a combined *target* is scored at
    ``data.size``.
    """
    if len(parts) == 1:
        return parts[0]
    shapes = {p.shape for p in parts}
    if len(shapes) > 1:
        raise DatasetError(
            f"cannot combine {', '.join(p.name for p in parts)}: slice sizes differ ({sorted(shapes)}); "
            "load them at one data.size"
        )
    seen: Counter[str] = Counter()
    renamed = []
    for part in parts:
        seen[part.name] += 1
        name = part.name if seen[part.name] == 1 else f"{part.name}#{seen[part.name]}"
        patients = np.char.add(f"{name}:", part.patients.astype(str))
        renamed.append(replace(part, name=name, patients=patients, dataset=None))
    combined = SliceSet.concat(renamed)
    sources = [
        {
            "name": p.name,
            "source": str(p.meta.get("source", "")),
            "fingerprint": p.fingerprint,
            "slices": len(p),
            "dataset": {"label_origin": label_origin(p)},
        }
        for p in renamed
    ]
    warnings_ = [w for p in parts for w in p.meta.get("warnings", [])]
    return replace(combined, meta={"combined": sources, "warnings": warnings_})


def parse_phantom_spec(text: str, options: dict) -> tuple[str, dict]:
    """``"phantom:DOMAIN?key=value&..."`` -> (domain, options): phantom options override ``options``,
    other keys become ``profile`` field overrides (numbers parsed as float, true/false as bool)."""
    domain, _, query = text.split(":", 1)[1].partition("?")
    options = dict(options)
    profile = dict(options.get("profile") or {})
    for item in filter(None, query.split("&")):
        key, eq, raw = item.partition("=")
        if not eq:
            raise DatasetError(f"phantom spec {text!r}: {item!r} is not key=value")
        value: Any = raw.lower() == "true" if raw.lower() in ("true", "false") else raw
        if value is raw:
            try:
                value = float(raw)
            except ValueError:
                pass
        if key in PHANTOM_DEFAULTS:
            options[key] = int(value) if key in ("seed", "n_patients", "n_slices") else value
        else:
            profile[key] = value
    if profile:
        options["profile"] = profile
    return domain, options


def phantom_settings(domain: str, size: int, options: dict) -> tuple[dict, Any]:
    """Resolved phantom settings (JSON-able, for hashing and provenance) and the ScannerProfile."""
    from fewshot_transfer.data import phantom as phantom_mod

    unknown = sorted(set(options) - set(PHANTOM_DEFAULTS))
    if unknown:
        raise DatasetError(f"unknown phantom option(s) {unknown}; allowed: {sorted(PHANTOM_DEFAULTS)}")
    if domain not in phantom_mod.DEFAULT_PROFILES:
        raise DatasetError(f"phantom domain {domain!r} is unknown; use one of {sorted(phantom_mod.DEFAULT_PROFILES)}")
    opts = {**PHANTOM_DEFAULTS, **options}
    profile = opts["profile"]
    base = phantom_mod.DEFAULT_PROFILES[domain]
    if profile is None:
        profile = base
    elif isinstance(profile, dict):
        fields = {f.name for f in dataclasses.fields(base)}
        bad = sorted(set(profile) - fields)
        if bad:
            raise DatasetError(f"unknown phantom profile field(s) {bad}; allowed: {sorted(fields)}")
        profile = replace(base, **profile)
    resolved = {
        "domain": domain,
        "size": int(size),
        "n_patients": int(opts["n_patients"]),
        "n_slices": int(opts["n_slices"]),
        "seed": int(opts["seed"]),
        "effusion_as_lesion": bool(opts["effusion_as_lesion"]),
        "profile": dataclasses.asdict(profile),
    }
    return resolved, profile


def _load_phantom(domain: str, *, size: int, cache_dir: Path | str | None, options: dict) -> SliceSet:
    from fewshot_transfer.data import phantom as phantom_mod
    from fewshot_transfer.data.export import EXPORT_VERSION

    settings, profile = phantom_settings(domain, size, options)
    generator = hashlib.sha256()
    for source in sorted(Path(phantom_mod.__file__).parent.glob("phantom*.py")):
        generator.update(source.read_bytes())
    key_src = json.dumps({**settings, "export": EXPORT_VERSION, "generator": generator.hexdigest()}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    folder = cdir / "phantoms" / key
    name = f"phantom-{domain}"
    if not _complete(folder):
        _export_phantom(phantom_mod, settings, profile, folder)
    try:
        data = load_dataset(folder, size=size, cache_dir=cdir, name=name)
    except DatasetError as err:
        log.warning("phantom export %s is damaged (%s); generating it again", folder, err)
        _export_phantom(phantom_mod, settings, profile, folder)
        data = load_dataset(folder, size=size, cache_dir=cdir, name=name)
    return replace(data, meta={**data.meta, "phantom": settings})


def _export_phantom(phantom_mod: Any, settings: dict, profile: Any, folder: Path) -> None:
    from fewshot_transfer.data.export import write_phantom_dataset

    volumes = phantom_mod.generate_volumes(
        settings["domain"],
        settings["n_patients"],
        size=settings["size"],
        n_slices=settings["n_slices"],
        seed=settings["seed"],
        profile=profile,
        effusion_as_lesion=settings["effusion_as_lesion"],
    )
    try:
        write_phantom_dataset(
            volumes, folder, name=f"phantom-{settings['domain']}", profile=profile, overwrite=folder.exists()
        )
    except (OSError, DatasetError):
        if not _complete(folder):
            raise
        log.debug("another process exported %s first; using its copy", folder)


def _complete(folder: Path) -> bool:
    return (folder / DATASET_JSON).is_file() and (folder / MANIFEST_CSV).is_file()


@dataclass
class _Image:
    unit: np.ndarray
    spacing: tuple[float, float] | None
    is_volume: bool


class _Decoder:
    """Decodes files for one load, keeping the last few so rows sharing a volume read it once."""

    def __init__(self, root: Path, spec: DatasetSpec, keep: int = 4) -> None:
        self.root = root
        self.spec = spec
        self.keep = keep
        self.warnings: list[dict[str, str]] = []
        self.byte_range_hu: list[tuple[Path, float, float]] = []
        self.where = f'"intensity" in {root / DATASET_JSON} (or the row\'s intensity column in {MANIFEST_CSV})'
        self._files: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def image(self, rel: str, intensity: str) -> _Image:
        return self._get((rel, f"image:{intensity}"), lambda: self._read_image(rel, intensity))

    def lesion(self, rel: str) -> np.ndarray:
        return self._get((rel, "mask"), lambda: self._read_mask(rel))

    def lung(self, rel: str) -> np.ndarray:
        return self._get((rel, "lung"), lambda: (read_label(self.root / rel).data > 0).astype(np.uint8))

    def _get(self, key: tuple[str, str], load: Any) -> Any:
        if key in self._files:
            self._files.move_to_end(key)
            return self._files[key]
        value = load()
        self._files[key] = value
        while len(self._files) > self.keep:
            self._files.popitem(last=False)
        return value

    def _read_image(self, rel: str, intensity: str) -> _Image:
        path = self.root / rel
        raw = read_image(path)
        lo, hi = (float(raw.data.min()), float(raw.data.max())) if raw.data.size else (0.0, 0.0)
        if intensity == "hu":
            if lo >= 0.0 and hi <= 255.0:
                self.byte_range_hu.append((path, lo, hi))
            unit = hu_to_unit(raw.data)
        else:
            if lo < 0.0 or hi > 255.0:
                raise DatasetError(
                    f'{path}: intensity "windowed-uint8" is declared but values span {lo:g}..{hi:g}, outside 0..255; '
                    f'if these are Hounsfield units set "intensity": "hu" via {self.where}'
                )
            w_lo, w_hi = self.spec.window
            unit = hu_to_unit(raw.data * np.float32((w_hi - w_lo) / 255.0) + np.float32(w_lo))
        return _Image(unit, raw.spacing_mm, raw.is_volume)

    def _read_mask(self, rel: str) -> np.ndarray:
        path = self.root / rel
        labels = read_label(path).data
        values = _unique_values(labels)
        unknown = sorted(set(values) - self.spec.allowed_mask_values())
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            lossy = ""
            if path.suffix.lower() in (".jpg", ".jpeg"):
                lossy = " (JPEG masks are lossy and smear label values: store masks as PNG or NIfTI)"
            raise DatasetError(
                f"{path}: mask values {shown} are not declared (lesion_labels {list(self.spec.lesion_labels)}, "
                f"known labels {sorted(self.spec.allowed_mask_values())}); if they are lesion add them to "
                f'"lesion_labels", if not add them to "labels" or "other_labels" in {self.root / DATASET_JSON}{lossy}'
            )
        return np.isin(labels, self.spec.lesion_labels).astype(np.uint8)

    def report_byte_range_hu(self) -> None:
        """One warning for all images declared "hu" whose values all lie in 0..255."""
        if not self.byte_range_hu:
            return
        path, lo, hi = self.byte_range_hu[0]
        more = len(self.byte_range_hu) - 1
        self.warn(
            f'{path}{f" and {more} more file(s)" if more else ""}: intensity "hu" is declared but every value lies '
            f'in 0..255 (min {lo:g}, max {hi:g}); this looks like windowed-uint8 — set "intensity": '
            f'"windowed-uint8" via {self.where}',
            "intensity",
        )

    def warn(self, message: str, kind: str) -> None:
        if not any(w["message"] == message for w in self.warnings):
            self.warnings.append({"kind": kind, "message": message})
            _emit(message, kind)


def _decode(root: Path, spec: DatasetSpec, rows: list[ManifestRow], *, size: int) -> SliceSet:
    decoder = _Decoder(root, spec)
    manifest = root / MANIFEST_CSV
    with_lungs = all(row.lung for row in rows)
    if not with_lungs and any(row.lung for row in rows):
        decoder.warn(
            f"{manifest}: only some rows have a lung mask; lung masks are ignored (give every row one to use them)",
            "dataset",
        )
    images, masks, lungs, labeled, patients, slice_index, splits, spacing = ([] for _ in range(8))
    counters: Counter[str] = Counter()
    native_shapes: Counter[str] = Counter()
    native_spacing: list[tuple[float, float]] = []
    origin_row: list[int] = []
    origin_z: list[int] = []
    row_shape: list[list[int]] = []
    row_spacing: list[list[float] | None] = []
    for r, row in enumerate(rows):
        img = decoder.image(row.image, row.intensity or spec.intensity)
        n_z, height, width = img.unit.shape
        if img.is_volume and row.slice is not None:
            if row.slice >= n_z:
                raise DatasetError(
                    f"{manifest}: line {row.line}: slice {row.slice} is out of range for {root / row.image} "
                    f"({n_z} slices, z = 0..{n_z - 1}); fix the slice index"
                )
            zs = [row.slice]
            index = zs
        elif img.is_volume:
            zs = list(range(n_z))
            index = zs
        else:
            zs = [0]
            index = [row.slice if row.slice is not None else counters[row.patient]]
            counters[row.patient] += 1
        lesion = np.zeros((len(zs), height, width), np.uint8)
        if row.mask:
            full = decoder.lesion(row.mask)
            _same_shape(manifest, row, root / row.image, img.unit.shape, root / row.mask, full.shape)
            lesion = full[zs]
        if with_lungs:
            lung = decoder.lung(row.lung)
            _same_shape(manifest, row, root / row.image, img.unit.shape, root / row.lung, lung.shape)
            lungs.append(_resize(lung[zs], size, nearest=True))
        images.append(np.clip(_resize(img.unit[zs], size, nearest=False), 0.0, 1.0))
        masks.append(_resize(lesion, size, nearest=True))
        native = img.spacing or spec.spacing_mm
        if native is not None:
            native_spacing.append(native)
        sp = (native[0] * height / size, native[1] * width / size) if native else (np.nan, np.nan)
        n = len(zs)
        origin_row += [r] * n
        origin_z += zs
        row_shape.append([int(height), int(width)])
        row_spacing.append([float(native[0]), float(native[1])] if native else None)
        labeled += [bool(row.mask)] * n
        patients += [row.patient] * n
        splits += [row.split] * n
        slice_index += index
        spacing += [sp] * n
        native_shapes[f"{height}x{width}"] += n
    decoder.report_byte_range_hu()
    meta = {
        "dataset": spec.to_json(),
        "size": size,
        "loader_version": LOADER_VERSION,
        "manifest_rows": len(rows),
        "warnings": decoder.warnings,
        "native_shapes": dict(native_shapes),
        "row_intensity": dict(Counter(row.intensity or spec.intensity for row in rows)),
        "native_spacing_mm": np.median(np.asarray(native_spacing), axis=0).tolist() if native_spacing else None,
        # Where each slice came from (manifest row, z) and each manifest row's original shape and
        # spacing: what native_slices() needs to read original masks back.
        "slices": {"row": origin_row, "z": [int(z) for z in origin_z]},
        "rows": {"shape": row_shape, "spacing": row_spacing},
    }
    return SliceSet(
        images=np.concatenate(images).astype(np.float32, copy=False),
        masks=np.concatenate(masks).astype(np.uint8, copy=False),
        labeled=np.asarray(labeled, dtype=bool),
        patients=np.asarray(patients, dtype=str),
        slice_index=np.asarray(slice_index, dtype=np.int32),
        splits=np.asarray(splits, dtype=str),
        spacing=np.asarray(spacing, dtype=np.float32).reshape(-1, 2),
        lungs=np.concatenate(lungs).astype(np.uint8, copy=False) if with_lungs else None,
        name=spec.name,
        meta=meta,
    )


def _same_shape(manifest: Path, row: ManifestRow, image: Path, ishape: tuple, other: Path, oshape: tuple) -> None:
    if tuple(ishape) != tuple(oshape):
        raise DatasetError(
            f"{manifest}: line {row.line}: image {image} has shape (z, rows, cols) {tuple(ishape)} but {other} has "
            f"{tuple(oshape)}; masks must match their image voxel for voxel (resample with nearest-neighbour)"
        )


def _resize(stack: np.ndarray, size: int, *, nearest: bool) -> np.ndarray:
    """``[n, H, W]`` -> ``[n, size, size]``: bilinear + antialias for images, nearest for masks."""
    if stack.shape[1:] == (size, size):
        return stack
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if nearest:
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")
        return out[:, 0].numpy().astype(stack.dtype)
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].numpy()


def _unique_values(labels: np.ndarray) -> list[int]:
    """Distinct values of a label map (bincount for small non-negative ints: much faster than unique)."""
    if labels.size == 0:
        return []
    lo, hi = int(labels.min()), int(labels.max())
    if lo >= 0 and hi < 65536:
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=1)).tolist()
    return np.unique(labels).tolist()


def _emit(message: str, kind: str) -> None:
    log.warning(message)
    warnings.warn(message, _WARNING_KINDS.get(kind, DatasetWarning), stacklevel=4)
