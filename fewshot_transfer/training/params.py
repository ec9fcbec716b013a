"""A learner's hyperparameters, cast once to the types of their defaults and range-checked.

Learners read ``ctx.params.batch_size`` (or ``ctx.params["batch_size"]``) and get an
``int``: the cast happens here, when the run's config is resolved, so a bad value fails
before any work with a message that names the key (``learners.finetune.lr``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class Params(Mapping[str, Any]):
    """Read-only hyperparameters with attribute access; ``dict(params)`` for JSON."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no hyperparameter {name!r}; known: {sorted(self._values)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Params are read-only; override them in the config ([learners.NAME])")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"


def cast_value(where: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (bool, int, float, str), or a clear ``ValueError``."""
    if default is None or isinstance(default, (list, tuple, dict)):
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    return value


def check_range(where: str, name: str, value: Any, bounds: Mapping[str, tuple[float | None, float | None]]) -> None:
    """Generic rules (``steps`` >= 0, sizes >= 1, rates > 0, shares in [0, 1]) plus ``bounds``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = bounds.get(name, (None, None))
    if name in bounds:
        pass
    elif name == "steps" or name.endswith("_steps"):
        lo = 0
    elif name in ("batch_size", "meta_batch", "n_support", "n_query") or name.endswith("_batch"):
        lo = 1
    elif name == "lr" or name.endswith("_lr"):
        if value <= 0:
            raise ValueError(f"{where} must be > 0, got {value!r}")
    elif name.endswith("_share"):
        lo, hi = 0.0, 1.0
    if lo is not None and value < lo:
        raise ValueError(f"{where} must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{where} must be <= {hi}, got {value!r}")
