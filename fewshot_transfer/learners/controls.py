"""Control arms: every learner beside the same learner with its mechanism switched off.

A learner declares ``control = Control(off={...}, same_as=...)`` (``learners/base.py``).
For each such learner this module registers a derived learner ``NAME-control``: the same
class (or ``same_as``'s class when ``off`` is empty), whose parameters are the learner's
own resolved parameters — tuned values included, read from ``[learners.NAME]`` — with
``off`` applied. It runs on the same cells, so it sees the same shots, unlabeled rows,
source rows, augmentation draws and optimizer: the paired difference learner − control
is the mechanism's effect and nothing else (``docs/protocol.md``, "Control arms").

:func:`control_row` picks the row that serves as a learner's control at k: ``same_as``
itself when it computes the same thing there (the parameters it has agree and it has a
cell at that k), so four meta-learners at default settings share one finetune row;
otherwise the derived ``NAME-control`` row.
"""

from __future__ import annotations

from typing import Any

from fewshot_transfer.config import config_at_k
from fewshot_transfer.learners.base import REGISTRY, SCHEDULE_KEYS, Learner
from fewshot_transfer.training.params import Params, cast_value

SUFFIX = "-control"


def _derive(cls: type[Learner]) -> type[Learner]:
    """The ``NAME-control`` learner of ``cls`` (not registered here)."""
    spec = cls.control
    assert spec is not None
    base = cls if spec.off or not spec.same_as else REGISTRY[spec.same_as]
    own = cls

    def resolve_params(_cls: type[Learner], config: dict) -> Params:
        if config.get("learners", {}).get(_cls.name):
            raise ValueError(
                f"[learners.{_cls.name}] is not read: a control takes {own.name}'s parameters "
                f"([learners.{own.name}]) with {spec.off or 'its mechanism'} off"
            )
        values: dict[str, Any] = dict(own.resolve_params(config))
        for key, value in spec.off.items():
            values[key] = cast_value(f"{own.name} control {key}", value, values[key])
        keys = [*SCHEDULE_KEYS, *base.defaults]
        return Params({key: values[key] if key in values else base.defaults[key] for key in dict.fromkeys(keys)})

    def search_space(trial: Any) -> dict[str, Any]:
        raise ValueError(f"{own.name}{SUFFIX} is not tuned: it takes {own.name}'s parameters with its mechanism off")

    off = ", ".join(f"{k} = {v}" for k, v in spec.off.items()) or f"{base.name}'s initialisation"
    return type(
        f"{base.__name__}Control",
        (base,),
        {
            "__doc__": f"``{cls.name}{SUFFIX}``: {cls.name} with {off} (its exact control arm).",
            "__module__": base.__module__,
            "name": f"{cls.name}{SUFFIX}",
            "family": cls.family,
            "supports_k0": cls.supports_k0,
            "control": None,
            "control_of": cls.name,
            "resolve_params": classmethod(resolve_params),
            "search_space": staticmethod(search_space),
        },
    )


def register_controls() -> None:
    """Register the ``NAME-control`` row of every registered learner that declares a control.

    Idempotent; called once the built-ins (and again once plugins) are imported, because a
    control may be the class of a learner registered after the one that declares it."""
    for cls in list(REGISTRY.values()):
        if cls.control is not None and not cls.control_of:
            name = f"{cls.name}{SUFFIX}"
            existing = REGISTRY.get(name)
            if existing is None:
                REGISTRY[name] = _derive(cls)
            elif existing.control_of != cls.name:
                raise ValueError(
                    f"learner {name!r} is registered by {existing.__name__}, but it names {cls.name}'s control"
                )


def control_row(name: str, k: int, config: dict) -> str | None:
    """The row that is learner ``name``'s control at ``k`` (None: the learner has no control).

    ``name`` must be registered (``learners.get`` / ``available`` discover the built-ins); the
    package imports this module, so it is not imported back here."""
    if name not in REGISTRY:
        raise ValueError(f"unknown learner {name!r}: resolve it with fewshot_transfer.learners.get first")
    cls = REGISTRY[name]
    spec = cls.control
    if spec is None or cls.control_of or (k == 0 and not cls.supports_k0):
        return None
    derived = REGISTRY[f"{name}{SUFFIX}"]
    if spec.same_as:
        other = REGISTRY[spec.same_as]
        mine = derived.resolve_params(config_at_k(config, name, k))
        theirs = other.resolve_params(config_at_k(config, other.name, k))
        has_cell = k > 0 or other.supports_k0 or other.k_independent
        if has_cell and all(mine.get(key) == value for key, value in theirs.items()):
            return other.name
    return derived.name


def with_controls(
    wanted: list[tuple[str, int | None]], ks: list[int], config: dict, requested: list[str]
) -> dict[str, set[int]]:
    """Rows to add so that every ``(learner, k or None = every k)`` of ``wanted`` has its
    control: row -> the k it is needed at.

    Rows that are ``requested`` learners of the run are not added (they run at every k anyway)."""
    extra: dict[str, set[int]] = {}
    for name, at in wanted:
        for k in ks:
            row = control_row(name, k, config) if at is None or k == at else None
            if row is not None and row not in requested:
                extra.setdefault(row, set()).add(k)
    return extra
