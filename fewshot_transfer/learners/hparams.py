"""One table per learner: each hyperparameter's default, range, search distribution and help.

A learner declares ``hparams = {"name": HP(default, "help", low=..., high=..., search=...)}``
and everything else is derived from it (``learners/base.py``): the typed ``defaults``, the
``bounds`` checked before any work, the Optuna space ``ftbench tune`` searches (in the
table's order), ``ftbench learners NAME`` and the table in ``docs/learners.md``. Declaring a
value once keeps the four from drifting apart (DomainBed's ``hparams_registry``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol


class Distribution(Protocol):
    """A search distribution: draws one value from an Optuna trial and describes itself."""

    def suggest(self, trial: Any, name: str) -> Any: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class LogUniform:
    """A float drawn log-uniformly from ``[low, high]`` (rates, weights spanning decades)."""

    low: float
    high: float

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)

    def describe(self) -> str:
        return f"log-uniform {self.low:g} .. {self.high:g}"


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from ``[low, high]``, on a grid of ``step`` when given."""

    low: float
    high: float
    step: float | None = None

    def suggest(self, trial: Any, name: str) -> float:
        if self.step is None:
            return trial.suggest_float(name, self.low, self.high)
        return trial.suggest_float(name, self.low, self.high, step=self.step)

    def describe(self) -> str:
        grid = f" step {self.step:g}" if self.step is not None else ""
        return f"uniform {self.low:g} .. {self.high:g}{grid}"


@dataclass(frozen=True)
class IntRange:
    """An integer from ``low`` to ``high`` inclusive, every ``step``-th (or log-uniform)."""

    low: int
    high: int
    step: int | None = None
    log: bool = False

    def suggest(self, trial: Any, name: str) -> int:
        kwargs: dict[str, Any] = {}
        if self.step is not None:
            kwargs["step"] = self.step
        if self.log:
            kwargs["log"] = True
        return trial.suggest_int(name, self.low, self.high, **kwargs)

    def describe(self) -> str:
        grid = f" step {self.step}" if self.step is not None else ""
        return f"{'log-' if self.log else ''}int {self.low} .. {self.high}{grid}"


@dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (strings, or a few numbers worth trying as they are)."""

    choices: tuple[Any, ...]

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class HP:
    """One hyperparameter: its default (whose type is the type the learner receives), a short
    help saying what it does, optional bounds beyond the generic rules
    (``training/params.py``: steps >= 0, sizes >= 1, rates > 0, shares in [0, 1]), and the
    distribution ``ftbench tune`` draws it from (None: not searched).

    ``default=None`` means "the run's ``[train]`` value" and is only meant for the schedule
    keys (``steps``, ``lr``, ``batch_size``); ``kind`` then names the type."""

    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    search: Distribution | None = None
    kind: type | None = None

    def but(self, **changes: Any) -> HP:
        """This entry with some fields changed (a learner's own default or range for a shared key)."""
        return dataclasses.replace(self, **changes)

    @property
    def type_name(self) -> str:
        return (self.kind or type(self.default)).__name__

    @property
    def bounded(self) -> bool:
        return self.low is not None or self.high is not None


def without(table: dict[str, HP], *names: str) -> dict[str, HP]:
    """``table`` less ``names`` (a variant that drops a parent's knob), order kept."""
    missing = set(names) - set(table)
    if missing:
        raise KeyError(f"not in the table: {sorted(missing)}")
    return {name: hp for name, hp in table.items() if name not in names}


#: The ``[train]`` schedule every learner inherits: the common budget, and the target loop's
#: step size, searched by default (a learner sets its own default with ``LR.but(default=...)``).
STEPS = HP(None, "target optimizer steps (the common budget, [train] steps; never tuned)", kind=int)
LR = HP(None, "Adam step size of the target loop", kind=float, search=LogUniform(1e-4, 1e-2))
BATCH_SIZE = HP(None, "labeled rows per step ([train] batch_size; never tuned)", kind=int)
SCHEDULE: dict[str, HP] = {"steps": STEPS, "lr": LR, "batch_size": BATCH_SIZE}

#: The share of a step's labeled rows drawn from the source (joint and the adversarial
#: learners): one range and one search grid, each learner its own default and wording.
SOURCE_SHARE = HP(
    0.2,
    "share of each step's labeled rows that are CAP rows",
    low=0.0,
    high=0.9,
    search=Uniform(0.0, 0.75, step=0.125),
)
