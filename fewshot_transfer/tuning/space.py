"""A learner's search space as ``ftbench tune`` sees it: which names it searches, which are pinned.

A learner declares its space in its hyperparameter table (``search=`` of each entry,
``learners/hparams.py``): the names it searches are read from the table, no trial needed;
names the config fixes under ``[learners.NAME]`` are not searched (:class:`PinnedTrial`).
"""

from __future__ import annotations

from collections.abc import Callable


class PinnedTrial:
    """Wraps a trial: names pinned in ``[learners.NAME]`` return their value unsearched."""

    def __init__(self, trial, pinned: dict) -> None:
        self._trial = trial
        self._pinned = pinned

    def _pick(self, fn: Callable, name: str, *args, **kwargs):
        return self._pinned[name] if name in self._pinned else fn(name, *args, **kwargs)

    def suggest_float(self, name, *args, **kwargs):
        return self._pick(self._trial.suggest_float, name, *args, **kwargs)

    def suggest_int(self, name, *args, **kwargs):
        return self._pick(self._trial.suggest_int, name, *args, **kwargs)

    def suggest_categorical(self, name, *args, **kwargs):
        return self._pick(self._trial.suggest_categorical, name, *args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._trial, attr)


def searched_names(learner_cls, pinned: dict) -> tuple[list[str], list[str]]:
    """(names the study searches, names pinned by the config) for ``learner_cls``."""
    if learner_cls.control_of:
        raise ValueError(
            f"{learner_cls.name} is not tuned: it takes {learner_cls.control_of}'s parameters with its mechanism off"
        )
    names = learner_cls.searched()
    if not names:
        raise ValueError(f"learner {learner_cls.name!r} declares no hyperparameters to tune (no search in its table)")
    free = [n for n in names if n not in pinned]
    fixed = [n for n in names if n in pinned]
    if not free:
        raise ValueError(
            f"every hyperparameter learner {learner_cls.name!r} searches ({', '.join(names)}) is fixed by "
            f"[learners.{learner_cls.name}] in the config; remove some of them (e.g. do not pass a best.toml "
            "of the same learner) to tune"
        )
    return free, fixed
