"""Trained weights on disk keyed by what they depend on; shared by learners, k and processes."""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fewshot_transfer.atomic import atomic_open, atomic_write_text
from fewshot_transfer.config import config_hash
from fewshot_transfer.portable import NATIVE, float_mode
from fewshot_transfer.provenance import code_version

log = logging.getLogger(__name__)


class ModelCache:
    """Source pretraining and meta-training are k-independent: the first cell that needs one
    trains it, later cells (and reruns) load it.

    Keys include the hash of the package sources, so a model trained by other code is never
    reused, and the float mode when it is portable (a native model would break a portable
    cell's promise; native keys are what they were). Files are written atomically, so a
    killed process never leaves a truncated checkpoint behind. Several worker processes may share one cache: an exclusive
    ``flock`` on ``<entry>.lock`` makes the first one train and the others wait for the
    finished file, so an entry is never trained twice.

    Each entry carries a sidecar ``<entry>.json`` with the seconds ``train()`` took, so a
    cell that only loads a model can still report what that model cost
    (:meth:`begin_cell` / :meth:`cell_costs`).
    """

    #: Entries kept decoded in memory per process (a seed's source model plus its meta models).
    MEMORY_ENTRIES = 8

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._memory: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self._cell: dict[str, tuple[str, float]] = {}
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: dict) -> Path:
        mode = float_mode()
        full = {**key, "code": code_version()["source_sha"], **({"float_mode": mode} if mode != NATIVE else {})}
        return self.root / f"{kind}-{config_hash(full)}.pt"

    def begin_cell(self) -> None:
        """Start a new cell's cost list (the runner calls this before each cell)."""
        self._cell = {}

    def cell_costs(self) -> dict[str, float]:
        """``{kind: seconds}``: original training time of every entry this cell loaded or trained."""
        out: dict[str, float] = {}
        for kind, seconds in self._cell.values():
            out[kind] = out.get(kind, 0.0) + seconds
        return out

    def get_or_train(self, kind: str, key: dict, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Return the cached object for ``key`` or build it with ``train()`` and store it."""
        p = self.path(kind, key)
        tag = str(p)
        found = self._recall(tag) or self._load(p)
        if found is None:
            with _locked(p.with_name(p.name + ".lock")):
                found = self._load(p)  # another process may have trained it while we waited
                if found is None:
                    t0 = time.perf_counter()
                    obj = train()
                    found = (obj, time.perf_counter() - t0)
                    self._store(p, kind, *found)
                    self.misses += 1
                else:
                    self.hits += 1
        else:
            self.hits += 1
        obj, seconds = found
        self._remember(tag, obj, seconds)
        self._cell[tag] = (kind, seconds)
        return copy.deepcopy(obj)

    def _recall(self, tag: str) -> tuple[dict[str, Any], float] | None:
        if tag in self._memory:
            self._memory.move_to_end(tag)
            return self._memory[tag]
        return None

    def _remember(self, tag: str, obj: dict[str, Any], seconds: float) -> None:
        self._memory[tag] = (obj, seconds)
        self._memory.move_to_end(tag)
        while len(self._memory) > self.MEMORY_ENTRIES:
            self._memory.popitem(last=False)

    @staticmethod
    def _sidecar(p: Path) -> Path:
        return p.with_suffix(".json")

    def _load(self, p: Path) -> tuple[dict[str, Any], float] | None:
        if not p.is_file():
            return None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # a corrupt file is rebuilt, never trusted
            log.warning("discarding unreadable cached model %s (%s)", p, exc)
            return None
        try:
            seconds = float(json.loads(self._sidecar(p).read_text())["train_s"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("cached model %s has no readable cost sidecar; counting 0 s", p)
            seconds = 0.0
        return obj, seconds

    def _store(self, p: Path, kind: str, obj: dict[str, Any], seconds: float) -> None:
        # Sidecar first: whoever sees the .pt also finds its cost.
        atomic_write_text(self._sidecar(p), json.dumps({"kind": kind, "train_s": seconds}))
        with atomic_open(p, "wb") as fh:
            torch.save(obj, fh)


class _locked:
    """An exclusive ``flock`` held for the ``with`` block (released by the OS if the holder dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()
