"""The resolved run plan: what every cell of a run trains with, decided once (nnU-Net's plans).

``harness/planning.py`` validates a run's config and resolves it into a :class:`RunPlan`:
the data, model and training schedule, the run settings the harness uses, and per (learner,
k) a :class:`CellPlan` with each hyperparameter's value *and where it came from* (learner
default, a config key, or a tuning study's draw). The plan is written to the run directory
(``plan.json``); the runner, the tuning code and the learners' context read its typed fields,
never the raw config dict. This module is core: it imports nothing of the package, so every
layer (training included) can read a plan.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

#: Where a hyperparameter's value came from (:class:`ParamSource`).
ORIGINS = ("default", "config", "tuned")

_STUDY_TEXT = re.compile(
    r"^(?P<study>\S+) @ (?P<storage>.+) trial #(?P<trial>\d+) "
    r"\((?P<score_name>.+) (?P<score>-?(?:\d+\.\d+|nan|inf))(?:, sampler seed (?P<seed>\d+))?\)$"
)


@dataclass(frozen=True)
class StudyRef:
    """One tuning study's chosen draw: which study (and storage), which trial, its score and the
    sampler seed that drew it (None in studies written before seeds were recorded)."""

    study: str
    storage: str
    trial: int
    score_name: str
    score: float
    sampler_seed: int | None = None

    @property
    def text(self) -> str:
        """The one-line provenance leaderboards print (and old records stored as a string)."""
        seed = f", sampler seed {self.sampler_seed}" if self.sampler_seed is not None else ""
        return f"{self.study} @ {self.storage} trial #{self.trial} ({self.score_name} {self.score:.4f}{seed})"

    @classmethod
    def parse(cls, text: str) -> StudyRef:
        """Read the one-line form (old cell records and configs)."""
        match = _STUDY_TEXT.match(text.strip())
        if not match:
            raise ValueError(f"not a study provenance line: {text!r}")
        seed = match.group("seed")
        return cls(
            study=match.group("study"),
            storage=match.group("storage"),
            trial=int(match.group("trial")),
            score_name=match.group("score_name"),
            score=float(match.group("score")),
            sampler_seed=int(seed) if seed is not None else None,
        )


@dataclass(frozen=True)
class TunedFrom:
    """The studies a run's (or a cell's) hyperparameters came from, in the order they were tuned."""

    studies: tuple[StudyRef, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.studies)

    @property
    def text(self) -> str:
        """``"; "``-joined one-line forms: what leaderboards show, as they always did."""
        return "; ".join(s.text for s in self.studies)

    @property
    def sampler_seed(self) -> int | None:
        """The first study's sampler seed (the one a leaderboard row names), if recorded."""
        return next((s.sampler_seed for s in self.studies if s.sampler_seed is not None), None)

    def to_json(self) -> list[dict]:
        return [asdict(s) for s in self.studies]

    def to_config(self) -> dict[str, dict]:
        """The ``[tuned_from."STUDY"]`` tables of a config (``best.toml``, a run's ``config.toml``)."""
        return {s.study: {k: v for k, v in asdict(s).items() if k != "study" and v is not None} for s in self.studies}

    def without(self, study: str) -> TunedFrom:
        return TunedFrom(tuple(s for s in self.studies if s.study != study))

    def plus(self, ref: StudyRef) -> TunedFrom:
        """These studies with ``ref`` last (replacing an earlier draw of the same study)."""
        return TunedFrom((*self.without(ref.study).studies, ref))

    @classmethod
    def read(cls, value: Any) -> TunedFrom:
        """Any stored form: a config's ``[tuned_from.STUDY]`` tables, a record's list, the old
        ``"; "``-joined string, or nothing."""
        if not value:
            return cls()
        if isinstance(value, str):
            return cls(tuple(StudyRef.parse(part) for part in value.split("; ") if part))
        if isinstance(value, Mapping):
            return cls(tuple(StudyRef(study=name, **dict(table)) for name, table in value.items()))
        return cls(tuple(StudyRef(**dict(item)) for item in value))


@dataclass(frozen=True)
class ParamSource:
    """A resolved hyperparameter: its value and origin (``default`` = the learner's code,
    ``config`` = the config key ``key``, ``tuned`` = ``key`` as written by ``study``)."""

    value: Any
    origin: str
    key: str = ""
    study: StudyRef | None = None


@dataclass(frozen=True)
class ControlArm:
    """The control arm a learner declares (``learners/base.py`` ``Control``)."""

    off: dict[str, Any] = field(default_factory=dict)
    same_as: str | None = None


@dataclass(frozen=True)
class CellPlan:
    """Everything a (learner, k) cell trains and is labelled with, resolved."""

    learner: str
    k: int
    k_label: str
    family: str
    params: dict[str, ParamSource]
    #: The row that is this learner's control at k (None: it has none).
    control: str | None
    #: Set on a control row: the learner whose control it is.
    control_of: str
    #: The declared control arm (None: the learner declares none).
    arm: ControlArm | None
    #: The selection token of the cell (a rule of ``harness/selection.py`` or ``defaults``).
    selection_rule: str
    tuned_from: TunedFrom

    @property
    def values(self) -> dict[str, Any]:
        """The hyperparameter values (what ``LearnerContext.params`` holds)."""
        return {name: p.value for name, p in self.params.items()}


@dataclass(frozen=True)
class TrainPlan:
    """The ``[train]`` schedule every learner shares (the common budget and evaluation)."""

    batch_size: int
    lr: float
    steps: int
    pretrain_steps: int
    eval_batch: int
    augment: bool
    threshold: float
    weight_decay: float


@dataclass(frozen=True)
class DataPlan:
    """The ``[data]`` table: which source and target, at which size, split how."""

    source: str
    target: str
    size: int
    cache_dir: str
    include_negative: float
    phantom: dict[str, Any]
    split: dict[str, Any]

    @classmethod
    def from_table(cls, data: Mapping[str, Any]) -> DataPlan:
        """The ``[data]`` table of a resolved config (a run's ``config.toml`` included)."""
        return cls(
            source=str(data["source"]),
            target=str(data["target"]),
            size=int(data["size"]),
            cache_dir=str(data.get("cache_dir") or ""),
            include_negative=float(data.get("include_negative", 0.0)),
            phantom=dict(data["phantom"]),
            split=dict(data["split"]),
        )


@dataclass(frozen=True)
class RunSettings:
    """The ``[run]`` settings the harness uses (what is run and how, not what is measured)."""

    shots: str
    seeds: list[int]
    learners: list[str]
    device: str
    out: str
    plots: bool
    threads: int
    protocol: str
    trials: int
    selection: str
    tune_shots: str
    tune_episodes: int
    jobs: int
    plugins: list[str]
    controls: str
    replicates: int
    portable: bool
    #: How the run's hyperparameters were chosen, in words (every record and leaderboard header).
    selection_text: str


@dataclass(frozen=True)
class RunPlan:
    """A run, resolved: sections, the cells' (learner, k) entries, and the config's hash
    (every cell's provenance names it). ``cells`` is filled once the shots are known."""

    data: DataPlan
    model: dict[str, Any]
    train: TrainPlan
    run: RunSettings
    metrics: list[str]
    tuned_from: TunedFrom
    config_hash: str
    #: The ``[learners]`` tables as configured (``NAME`` and per-k ``"NAME@k=K"``): what the
    #: cell entries were resolved from, kept so entries can be added without the raw config.
    learner_tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    cells: tuple[CellPlan, ...] = ()

    def cell(self, learner: str, k_label: str) -> CellPlan:
        """The entry of ``learner`` at ``k_label`` (a KeyError naming what the plan holds)."""
        for c in self.cells:
            if c.learner == learner and c.k_label == k_label:
                return c
        held = sorted({f"{c.learner}@{c.k_label}" for c in self.cells})
        raise KeyError(f"the run plan has no cell entry for {learner} at k = {k_label}; it holds {held}")

    def to_json(self) -> str:
        """``plan.json``: the plan as written to the run directory."""
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str) + "\n"
