"""Trained weights on disk keyed by what they depend on; shared by learners, k and processes."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from fewshot_transfer.atomic import atomic_open
from fewshot_transfer.config import config_hash
from fewshot_transfer.provenance import code_version

log = logging.getLogger(__name__)


class ModelCache:
    """Source pretraining and meta-training are k-independent: the first cell that needs one
    trains it, later cells (and reruns) load it.

    Keys include the hash of the package sources, so a model trained by other code is never
    reused. Files are written atomically, so a killed process never leaves a truncated
    checkpoint behind.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: dict) -> Path:
        return self.root / f"{kind}-{config_hash({**key, 'code': code_version()['source_sha']})}.pt"

    def get_or_train(self, kind: str, key: dict, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Return the cached object for ``key`` or build it with ``train()`` and store it."""
        p = self.path(kind, key)
        tag = str(p)
        if tag in self._memory:
            self.hits += 1
            return copy.deepcopy(self._memory[tag])
        if p.is_file():
            try:
                obj = torch.load(p, map_location="cpu", weights_only=True)
                self._memory[tag] = obj
                self.hits += 1
                return copy.deepcopy(obj)
            except Exception as exc:  # a corrupt file is rebuilt, never trusted
                log.warning("discarding unreadable cached model %s (%s)", p, exc)
        self.misses += 1
        obj = train()
        with atomic_open(p, "wb") as fh:
            torch.save(obj, fh)
        self._memory[tag] = obj
        return copy.deepcopy(obj)
