"""The learner contract: ``fit(context) -> Segmenter``, declared data needs, typed defaults.

A learner subclasses :class:`Learner`, sets ``name`` / ``family`` / the ``uses_*`` flags,
declares its hyperparameters in one table (``hparams``, ``learners/hparams.py``) and
implements :meth:`fit`. The
harness resolves its parameters once (defaults < ``[train]`` schedule < ``[learners.NAME]``),
casts them to the defaults' types and checks their ranges before any work, and builds a
:class:`~fewshot_transfer.training.LearnerContext` that withholds the pools the learner
did not declare. :func:`register` adds it to the registry under ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from fewshot_transfer.families import check_family
from fewshot_transfer.learners.hparams import HP, SCHEDULE
from fewshot_transfer.training.context import LearnerContext
from fewshot_transfer.training.params import Params, cast_value, check_range
from fewshot_transfer.training.segmenter import Segmenter

#: The ``[train]`` keys every learner inherits as hyperparameters (the common budget).
SCHEDULE_KEYS = tuple(SCHEDULE)


@dataclass(frozen=True)
class Control:
    """A learner's exact control arm: the same learner and batch stream with its mechanism off.

    ``off`` are the parameter values that switch the mechanism off (``lambda_adv = 0``,
    ``meta_steps = 0``, ``unlabeled_weight = 0``, ``source_share = 0``); every other
    parameter is the learner's own (tuned values included). ``same_as`` names a learner
    that computes exactly that (tested bit for bit) whenever the parameters it has agree:
    then its row serves as the control, run once however many learners share it. With
    ``off`` empty the control *is* ``same_as`` run with the learner's parameters
    (finetune's control is scratch at finetune's lr).
    """

    off: dict[str, Any] = field(default_factory=dict)
    same_as: str | None = None


class Learner:
    """Base class: subclasses set ``name``/``family``/flags, ``hparams`` and implement :meth:`fit`.

    ``hparams`` is the learner's table (the ``[train]`` schedule keys are added in front);
    from it, when the class is defined, come ``defaults`` (overridden by ``[learners.NAME]``
    in the config; their types are the types the learner receives), ``bounds`` (ranges
    beyond the generic ones: steps >= 0, batch sizes >= 1, rates > 0, shares in [0, 1]) and
    :meth:`search_space` (what ``ftbench tune`` searches). A subclass that declares no
    table inherits its parent's.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "baseline"
    uses_source: ClassVar[bool] = False
    uses_target: ClassVar[bool] = True
    uses_unlabeled: ClassVar[bool] = False
    #: True when the result does not depend on k (source-only): one cell per seed.
    k_independent: ClassVar[bool] = False
    #: True when the learner can run without target labels (k = 0: ``ctx.k == 0`` and an
    #: empty ``ctx.support``); the others show "n/a" in the k = 0 column.
    supports_k0: ClassVar[bool] = False
    hparams: ClassVar[dict[str, HP]] = dict(SCHEDULE)
    #: Derived from ``hparams``: every entry with a default of its own (not the [train] value).
    defaults: ClassVar[dict[str, Any]] = {}
    #: Derived from ``hparams``: every entry with a ``low`` or ``high``.
    bounds: ClassVar[dict[str, tuple[float | None, float | None]]] = {}
    #: The learner's control arm (``learners/controls.py`` derives its ``NAME-control`` row).
    control: ClassVar[Control | None] = None
    #: Set on a derived control row: the learner whose control it is.
    control_of: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        legacy = [key for key in ("defaults", "bounds") if key in own]
        if legacy:
            raise TypeError(
                f"{cls.__name__} sets {' and '.join(legacy)}: declare the hyperparameters in one table instead, "
                "hparams = {'name': HP(default, 'help', low=..., high=..., search=...)} (docs/plugins.md)"
            )
        if "hparams" in own:
            cls.hparams = {**SCHEDULE, **own["hparams"]}
            cls.defaults = {name: hp.default for name, hp in cls.hparams.items() if hp.default is not None}
            cls.bounds = {name: (hp.low, hp.high) for name, hp in cls.hparams.items() if hp.bounded}

    @classmethod
    def resolve_params(cls, config: dict) -> Params:
        """Learner defaults < the run's [train] schedule < ``[learners.NAME]``, typed and checked."""
        train = config["train"]
        base = {key: train[key] for key in SCHEDULE_KEYS}
        user = config.get("learners", {}).get(cls.name, {})
        reference = {**base, **cls.defaults}
        unknown = set(user) - set(reference)
        if unknown:
            raise ValueError(
                f"unknown hyperparameters {sorted(unknown)} for learner {cls.name!r}; valid: {sorted(reference)}"
            )
        values: dict[str, Any] = {}
        for key, value in {**reference, **user}.items():
            where = f"learners.{cls.name}.{key}" if key in user else f"{cls.name} default {key}"
            typed = cast_value(where, value, reference[key])
            check_range(where, key, typed, cls.bounds)
            values[key] = typed
        return Params(values)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Hyperparameters for Optuna: each table entry with a ``search`` distribution, in table
        order (the base searches lr only). Never ``steps``: the target budget (train.steps) is
        the same for every learner by protocol."""
        return {name: hp.search.suggest(trial, name) for name, hp in cls.hparams.items() if hp.search is not None}

    @classmethod
    def searched(cls) -> list[str]:
        """The names :meth:`search_space` suggests, read from the table (no trial needed)."""
        return [name for name, hp in cls.hparams.items() if hp.search is not None]

    def fit(self, ctx: LearnerContext) -> Segmenter:
        raise NotImplementedError


REGISTRY: dict[str, type[Learner]] = {}


def register(cls: type[Learner]) -> type[Learner]:
    """Class decorator adding a learner to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    check_family(cls.family, cls.name)
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"learner name {cls.name!r} registered twice ({REGISTRY[cls.name].__name__}, {cls.__name__})")
    REGISTRY[cls.name] = cls
    return cls
