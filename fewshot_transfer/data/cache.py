"""Dataset fingerprints and the compact, atomic cache of decoded datasets.

Two hashes, for two jobs:

* the **cache key** hashes ``dataset.json``, ``manifest.csv``, every referenced file's
  relative path, size and ``mtime_ns``, and the loader settings. Computing it needs only
  ``stat`` calls, so a rerun finds its cache entry in milliseconds, and touching or
  replacing any file invalidates it.
* the **content fingerprint** hashes the same two files, every referenced file's content
  (``.gz`` decompressed) and the loader settings. It is computed once, while decoding, stored in the cache entry
  and becomes ``SliceSet.fingerprint``. Unlike mtimes it is the same on every machine, so
  a split file or a result recorded against it stays valid for a copied dataset or a
  re-exported phantom.

A cache entry is one uncompressed ``.npz`` named ``<cache key>.npz``: images as uint16
(``round(x * 65535)``; absolute error <= 1/131070 ~ 7.6e-6 of the [0, 1] scale, i.e.
0.011 HU in the lung window), masks and lung masks bit-packed. Both the first load and
cached loads return the dequantized arrays, so they are identical. Entries are written
to a temporary file in the cache folder and moved into place with ``os.replace``: a
crash never leaves a truncated entry under the real name, and an unreadable entry is
discarded with a warning and rebuilt.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from fewshot_transfer.atomic import atomic_open
from fewshot_transfer.data.dataset_format import DATASET_JSON, MANIFEST_CSV
from fewshot_transfer.data.slices import SliceSet

log = logging.getLogger(__name__)

#: Bump when the entry layout changes; old entries are then simply not found.
CACHE_FORMAT = 1
#: Environment variable naming ftbench's cache root; datasets live in ``$FTBENCH_CACHE/datasets``.
ENV_VAR = "FTBENCH_CACHE"
_Q = 65535.0


class CacheWarning(UserWarning):
    """A cache entry could not be read or written; the data is decoded from source instead."""


def cache_root() -> Path:
    """``$FTBENCH_CACHE`` when set, else ``~/.cache/ftbench`` (datasets/ and models/ live below)."""
    root = os.environ.get(ENV_VAR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ftbench"


def default_cache_dir() -> Path:
    """``$FTBENCH_CACHE/datasets`` when the variable is set, else ``~/.cache/ftbench/datasets``."""
    return cache_root() / "datasets"


def cache_key(root: Path, stats: dict[str, os.stat_result], settings: dict) -> str:
    """Fast key: folder description files + (path, size, mtime_ns) of each file + settings.

    ``stats`` maps manifest paths to their ``stat`` (as :func:`check_files` returns them).
    """
    h = _header_hash(root, settings)
    for rel in sorted(stats):
        st = stats[rel]
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def content_fingerprint(root: Path, files: list[str], settings: dict) -> str:
    """Portable fingerprint: folder description files + content of each file + settings.

    ``.gz`` files are hashed decompressed: gzip output differs between zlib builds, so
    the same phantom exported on two machines must not get two fingerprints.
    """
    h = _header_hash(root, settings)
    for rel in files:
        opener = gzip.open if rel.lower().endswith(".gz") else open
        with opener(root / rel, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()[:16]


def pack(data: SliceSet) -> dict[str, np.ndarray]:
    """The arrays of a cache entry (see module docstring for precision)."""
    payload = {
        "format": np.array(CACHE_FORMAT),
        "shape": np.array(data.images.shape, dtype=np.int64),
        "images": np.rint(np.clip(data.images, 0.0, 1.0) * _Q).astype(np.uint16),
        "masks": np.packbits(data.masks.astype(bool), axis=None),
        "labeled": data.labeled.astype(bool),
        "patients": np.asarray(data.patients, dtype=str),
        "slice_index": data.slice_index.astype(np.int32),
        "splits": np.asarray(data.splits, dtype=str),
        "spacing": data.spacing.astype(np.float32),
        "name": np.array(data.name),
        "fingerprint": np.array(data.fingerprint),
        "meta": np.array(json.dumps(data.meta)),
    }
    if data.lungs is not None:
        payload["lungs"] = np.packbits(data.lungs.astype(bool), axis=None)
    return payload


def unpack(payload: dict[str, np.ndarray]) -> SliceSet:
    """Inverse of :func:`pack`."""
    if int(payload["format"]) != CACHE_FORMAT:
        raise ValueError(f"cache format {int(payload['format'])} is not {CACHE_FORMAT}")
    shape = tuple(int(v) for v in payload["shape"])
    count = int(np.prod(shape))

    def bits(key: str) -> np.ndarray:
        return np.unpackbits(payload[key], count=count).reshape(shape)

    return SliceSet(
        images=payload["images"].astype(np.float32) / np.float32(_Q),
        masks=bits("masks"),
        labeled=payload["labeled"].astype(bool),
        patients=payload["patients"],
        slice_index=payload["slice_index"],
        splits=payload["splits"],
        spacing=payload["spacing"],
        lungs=bits("lungs") if "lungs" in payload else None,
        name=str(payload["name"]),
        fingerprint=str(payload["fingerprint"]),
        meta=json.loads(str(payload["meta"])),
    )


def entry_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"{key}.npz"


def load_cached(cache_dir: Path, key: str) -> SliceSet | None:
    """The cached SliceSet for ``key``; None when absent. A corrupt entry is deleted (with a warning)."""
    path = entry_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return unpack({k: npz[k] for k in npz.files})
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError) as err:
        _warn(
            f"dataset cache entry {path} is unreadable ({type(err).__name__}: {err}); discarding it and decoding again"
        )
        path.unlink(missing_ok=True)
        return None


def store(cache_dir: Path, key: str, data: SliceSet) -> SliceSet:
    """Write ``data`` atomically under ``key``; return it as every later cached load will see it.

    A cache that cannot be written (read-only, disk full) costs speed, not correctness:
    it is reported as a warning and the data is returned anyway.
    """
    payload = pack(data)
    result = unpack(payload)
    cache_dir = Path(cache_dir)
    try:
        with atomic_open(entry_path(cache_dir, key), "wb") as fh:
            np.savez(fh, **payload)
    except OSError as err:
        _warn(
            f"cannot write dataset cache in {cache_dir} ({err}); continuing without the cache "
            f"(set {ENV_VAR} to a writable folder)"
        )
    return result


def _header_hash(root: Path, settings: dict) -> hashlib._Hash:
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode() + b"\n")
    for name in (DATASET_JSON, MANIFEST_CSV):
        h.update((root / name).read_bytes() + b"\0")
    return h


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(message, CacheWarning, stacklevel=3)
