"""Learners: every module in this package registers one or more learners on import.

``available()`` lists them in a stable order (baselines first, then the families); a new
learner is one new module here, nothing else to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from fewshot_transfer.learners.base import REGISTRY, Learner, register
from fewshot_transfer.training import LearnerContext, Segmenter

__all__ = ["REGISTRY", "Learner", "LearnerContext", "Segmenter", "available", "get", "register"]

_FAMILY_ORDER = {"baseline": 0, "adversarial": 1, "meta": 2, "semi": 3}
_BASELINE_ORDER = ("scratch", "source-only", "finetune", "joint")
_loaded = False


def _discover() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def available() -> list[str]:
    """Registered learner names: baselines in canonical order, then others by family and name."""
    _discover()

    def order(name: str) -> tuple:
        cls = REGISTRY[name]
        base = _BASELINE_ORDER.index(name) if name in _BASELINE_ORDER else len(_BASELINE_ORDER)
        return (_FAMILY_ORDER.get(cls.family, 9), base, name)

    return sorted(REGISTRY, key=order)


def get(name: str) -> type[Learner]:
    """The learner class registered as ``name`` (clear error listing the valid names)."""
    _discover()
    if name not in REGISTRY:
        raise ValueError(f"unknown learner {name!r}; available: {', '.join(available())}")
    return REGISTRY[name]
