"""The hyperparameter tables (``learners/hparams.py``) reproduce what the learners declared before.

``hparams_before.json`` was recorded from the code *before* the tables existed, when each
learner declared ``defaults``, ``bounds`` and ``search_space`` separately: for every
registered learner (control rows included), its resolved parameters under
``configs/{quick,real,full}.toml``, its ``bounds``, its ``defaults`` and every
``trial.suggest_*`` call its ``search_space`` made (method, name, arguments). The tables must
give the same values, types, ranges and draws: a refactor that moves a number fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fewshot_transfer import learners
from fewshot_transfer.cli import main
from fewshot_transfer.config import resolve_config
from fewshot_transfer.learners.base import Learner
from fewshot_transfer.learners.catalog import REGENERATE, markdown
from fewshot_transfer.learners.hparams import HP, LogUniform

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((Path(__file__).parent / "hparams_before.json").read_text())


class Recorder:
    """A stand-in trial recording each ``suggest_*`` call; returns the lowest choice."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def suggest_float(self, name, *args, **kwargs):
        self.calls.append(["suggest_float", name, list(args), kwargs])
        return args[0]

    def suggest_int(self, name, *args, **kwargs):
        self.calls.append(["suggest_int", name, list(args), kwargs])
        return args[0]

    def suggest_categorical(self, name, *args, **kwargs):
        self.calls.append(["suggest_categorical", name, list(args), kwargs])
        return args[0][0]


def typed(items) -> dict[str, tuple[str, Any]]:
    return {key: (type(value).__name__, value) for key, value in items}


def first_suggestions(calls: list) -> list:
    """Calls with a name's repeats dropped: Optuna answers a repeated suggestion with the value
    already drawn (adaptseg re-suggested its parent's lambda_adv with the same range)."""
    seen: dict[str, list] = {}
    for call in calls:
        assert seen.setdefault(call[1], call) == call, f"{call[1]} suggested twice with different arguments"
    return list(seen.values())


def test_the_fixture_covers_every_built_in_learner():
    names = learners.available(controls=True)
    assert set(BEFORE) == {n for n in names if learners.get(n).__module__.startswith("fewshot_transfer.")}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_tables_reproduce_the_recorded_behaviour(name):
    old, cls = BEFORE[name], learners.get(name)
    for profile, resolved in old["resolved"].items():
        new = cls.resolve_params(resolve_config(ROOT / "configs" / f"{profile}.toml"))
        assert typed(new.items()) == {k: tuple(v) for k, v in resolved}, profile
    assert {k: list(v) for k, v in cls.bounds.items()} == old["bounds"]
    assert typed(cls.defaults.items()) == {k: tuple(v) for k, v in old["defaults"]}
    trial = Recorder()
    if "search_error" in old:
        with pytest.raises(ValueError) as err:
            cls.search_space(trial)
        assert str(err.value) == old["search_error"]
        return
    space = cls.search_space(trial)
    assert trial.calls == first_suggestions(old["search"])
    assert list(space) == old["space_keys"]


@pytest.mark.parametrize("name", learners.available())
def test_searched_names_are_the_suggested_names(name):
    """``ftbench tune`` reads the searched names from the table: a ``search_space`` override may
    drop a draw from the returned dict (maml-fewstep) but never suggest a name off the table."""
    cls = learners.get(name)
    trial = Recorder()
    cls.search_space(trial)
    assert [call[1] for call in trial.calls] == cls.searched()


@pytest.mark.parametrize("name", learners.available())
def test_every_hyperparameter_has_help(name):
    cls = learners.get(name)
    assert all(hp.help.strip() for hp in cls.hparams.values()), name


def test_the_docs_table_is_current():
    expected = markdown([learners.get(n) for n in learners.available()])
    current = (ROOT / "docs" / "learners.md").read_text()
    assert current == expected, f"docs/learners.md is out of date; regenerate it: {REGENERATE}"


def test_a_table_derives_defaults_bounds_and_space():
    class Toy(Learner):
        name = "toy"
        hparams = {"weight": HP(0.5, "a weight", low=0.0, high=2.0, search=LogUniform(0.1, 1.0))}

    assert Toy.defaults == {"weight": 0.5} and Toy.bounds == {"weight": (0.0, 2.0)}
    assert Toy.searched() == ["lr", "weight"]
    config = resolve_config(None, ["train.lr=0.001"])
    assert dict(Toy.resolve_params(config))["weight"] == 0.5
    with pytest.raises(ValueError, match="must be <= 2.0"):
        Toy.resolve_params(resolve_config(None, ["learners.toy.weight=3.0"]))


def test_separate_defaults_are_refused():
    with pytest.raises(TypeError, match="one table"):

        class Old(Learner):
            name = "old"
            defaults = {"lr": 0.01}


def test_learners_command(capsys):
    assert main(["learners"]) == 0
    listing = capsys.readouterr().out
    assert "mean-teacher-cap" in listing and "meta_steps = 0" in listing
    assert main(["learners", "reptile"]) == 0
    table = capsys.readouterr().out
    assert "meta_lr" in table and "log-uniform 0.05 .. 1" in table and "[train]" in table
