"""Tune one learner's hyperparameters with Optuna: one study per (learner, k).

A trial writes the sampled values into ``config["learners"][NAME]`` and runs ``run_cell``
on the validation benchmark (:mod:`fewshot_transfer.tuning.validation`) once per episode;
the objective is the mean validation Dice. Storage, heartbeats and retries are in
:mod:`fewshot_transfer.tuning.storage`, the search space in
:mod:`fewshot_transfer.tuning.space`.

Draws
-----
Every study is random search (:func:`make_sampler`) with its own seed, a stable hash of the
learner's name and k (:func:`study_seed`; not Python's salted ``hash()``), stated in
``best.toml`` and in every tuned leaderboard row. The draw of trial *n* is a function of
(seed, n, parameter name) only, so a resumed study continues the sequence where it stopped
instead of restarting it (the old TPE sampler, re-created with the same seed on resume,
repeated the first draws), and several workers sharing a study draw different points. The
seed leaves the selection rule out on purpose: the ``val``, ``shots`` and ``source-val``
studies of one learner and k evaluate the same candidates and differ only in which one they
pick. A trial left RUNNING by a killed process is failed and its parameters are re-queued
(:func:`recover_orphans`), so its draw is evaluated rather than lost.

Pruning
-------
After episode e the trial reports to Optuna at ``step = e``:

* ``median`` (default, :class:`optuna.pruners.MedianPruner`): the running mean of the
  validation Dice over episodes 0..e. Step e is the same set of episodes for every trial,
  so the median it is compared with is over identical episodes.
* ``wilcoxon`` (:class:`optuna.pruners.WilcoxonPruner`): the Dice of episode e itself;
  the pruner runs a paired signed-rank test against the best trial over the shared
  episodes. With 3 episodes the smallest one-sided p-value is 1/8, so it only prunes
  with ~5+ episodes.

The training loss that the learner's progress callback receives every step is shown in the
progress display but not used for pruning: it is a different quantity (it keeps falling
when a large learning rate overfits the k shots) and an Optuna trial has one
intermediate-value series in the study's direction. ``trial.should_prune()`` can only
change after a ``report``, so it is checked at episode boundaries.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fewshot_transfer.config import apply_overrides, config_hash, run_identity, to_toml
from fewshot_transfer.harness.selection import DEFAULT_RULE, is_oracle
from fewshot_transfer.plan import StudyRef, TunedFrom
from fewshot_transfer.tuning.space import PinnedTrial
from fewshot_transfer.tuning.storage import DEFAULT_GRACE, DEFAULT_HEARTBEAT, redact, worker_id
from fewshot_transfer.tuning.validation import SelectionSplit

log = logging.getLogger(__name__)

STUDY_ATTR = "ftbench_tune"


@dataclasses.dataclass
class TuneSpec:
    """Everything that defines one tuning study (checked on resume and by every worker)."""

    learner: str
    shots: str
    episodes: int
    val_fraction: float
    config: dict
    storage: str
    study_name: str
    out: Path
    pruner: str = "median"
    startup_trials: int = 5
    warmup_episodes: int = 1
    sampler_seed: int | None = None
    n_trials: int = 20
    timeout: float | None = None
    heartbeat: int | None = DEFAULT_HEARTBEAT
    grace: int | None = DEFAULT_GRACE
    #: The selection rule the study scores with (``harness/selection.py``).
    selection: str = DEFAULT_RULE

    def __post_init__(self) -> None:
        if self.sampler_seed is None:
            self.sampler_seed = study_seed(self.learner, self.shots)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.episodes))


def study_seed(learner: str, k_label: str) -> int:
    """The sampler seed of the (learner, k) studies: the first 4 bytes of SHA-256 of
    ``"LEARNER|k=K"``, the same in every process and Python version (``hash()`` is salted)."""
    return int.from_bytes(hashlib.sha256(f"{learner}|k={k_label}".encode()).digest()[:4], "big")


def _draw_seed(seed: int, number: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{number}|{name}".encode()).digest()[:4], "big")


def make_sampler(seed: int):
    """Random search in which trial *n*'s value of a parameter is a function of (seed, n, name):
    what storage already holds decides where a resumed study goes on, never the process."""
    import optuna

    class DrawSampler(optuna.samplers.BaseSampler):
        def __init__(self, seed: int) -> None:
            self.seed = int(seed)

        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            draw = optuna.samplers.RandomSampler(seed=_draw_seed(self.seed, trial.number, param_name))
            return draw.sample_independent(study, trial, param_name, param_distribution)

    return DrawSampler(seed)


def recover_orphans(study) -> list[int]:
    """Fail the trials a killed process left RUNNING and re-queue their parameters (so the draw is
    evaluated, not lost or re-sampled); returns their numbers. Only for a study that one process
    runs at a time (no heartbeats): with heartbeats Optuna fails and retries stale trials itself."""
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in orphans:
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        log.warning(
            "study %s: trial %d was left running by a stopped process; failed and re-queued", study.study_name, t.number
        )
    return [t.number for t in orphans]


def make_pruner(name: str, *, startup_trials: int, warmup_episodes: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_episodes)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=max(2, warmup_episodes + 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner must be median, wilcoxon or none, got {name!r}")


def identity(spec: TuneSpec, info: dict, k: int) -> dict:
    """What a trial's number depends on; stored on the study and compared by every worker."""
    fixed = run_identity(spec.config)
    return {
        "learner": spec.learner,
        "k": k,
        "k_label": spec.shots,
        "episodes": spec.episodes,
        "val_fraction": spec.val_fraction,
        "pruner": spec.pruner,
        "selection": spec.selection,
        "sampler_seed": spec.sampler_seed,
        "config_hash": config_hash(fixed),
        "tune_support": info["tune_support"],
        "validation": info["validation"],
    }


def open_study(spec: TuneSpec, storage, ident: dict):
    """Create or load the study and check it was made for the same tuning setup."""
    import optuna

    sampler = make_sampler(int(spec.sampler_seed))
    pruner = make_pruner(spec.pruner, startup_trials=spec.startup_trials, warmup_episodes=spec.warmup_episodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study_name,
            direction="maximize",
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ValueError(f"study {spec.study_name!r} in {redact(spec.storage)} does not maximize; use another --study")
    saved = study.user_attrs.get(STUDY_ATTR)
    if saved is None:
        if any(True for _ in study.get_trials(deepcopy=False)) and not study.user_attrs:
            raise ValueError(
                f"study {spec.study_name!r} in {redact(spec.storage)} was not made by ftbench tune; use another --study"
            )
        study.set_user_attr(STUDY_ATTR, ident)
        study.set_user_attr("config_toml", to_toml(spec.config))
    elif saved != ident:
        diff = sorted(k for k in set(saved) | set(ident) if saved.get(k) != ident.get(k))
        raise ValueError(
            f"study {spec.study_name!r} in {redact(spec.storage)} was created for a different tuning setup "
            f"({', '.join(diff)} differ); use another --study (or the original config and flags to resume it)"
        )
    return study


def trial_config(base: dict, learner: str, params: dict) -> dict:
    """``base`` with ``params`` in ``[learners.NAME]``; per-k tables of an earlier tuned run
    (``[learners."NAME@k=K"]``) are dropped, or they would override every trial's draw."""
    tables = {k: v for k, v in base.get("learners", {}).items() if not k.startswith(f"{learner}@k=")}
    return {
        **copy.deepcopy(base),
        "learners": copy.deepcopy({**tables, learner: {**tables.get(learner, {}), **params}}),
    }


def make_objective(spec: TuneSpec, split: SelectionSplit, on_progress: Callable[[str], None] | None = None):
    """The Optuna objective: the mean Dice over ``spec.episodes`` paired episodes, each the mean
    over the fits ``split.episode(seed)`` lists (one, or one per fold of the shots)."""
    import optuna

    from fewshot_transfer import learners
    from fewshot_transfer.harness.planning import run_plan
    from fewshot_transfer.harness.runner import run_cell
    from fewshot_transfer.harness.store import CellSpec, CellStore

    cls = learners.get(spec.learner)
    pinned = dict(spec.config.get("learners", {}).get(spec.learner, {}))
    trials_dir = Path(spec.out) / "trials" / spec.study_name.replace("/", "_")

    def objective(trial) -> float:
        params = cls.search_space(PinnedTrial(trial, pinned))
        cfg = trial_config(spec.config, spec.learner, params)
        plan = run_plan(cfg)  # the trial's draw, resolved once for its episodes
        full = cls.resolve_params(cfg)  # validates the names
        trial.set_user_attr("learner_params", {**pinned, **params})
        trial.set_user_attr("worker", worker_id())
        out = trials_dir / f"trial-{trial.number:04d}"
        dices: list[float] = []
        for e, seed in enumerate(spec.seeds):

            def callback(step: int, values: dict, _e: int = e) -> None:
                if on_progress is not None and step % 5 == 0:
                    loss = ", ".join(f"{n} {v:.3f}" for n, v in values.items() if n != "phase")
                    on_progress(
                        f"trial {trial.number} episode {_e + 1}/{spec.episodes}: {values.get('phase')} "
                        f"step {step}{'/' + str(full['steps']) if values.get('phase') != 'pretrain' else ''} ({loss})"
                    )

            fits: list[float] = []
            for scoring in split.episode(seed):
                where = out / scoring.tag if scoring.tag else out
                bench = dataclasses.replace(scoring.bench, plan=plan, out_dir=where, _supports=scoring.bench._supports)
                cell = CellSpec(seed=seed, k=scoring.k, k_label=scoring.k_label, learner=spec.learner)
                record = run_cell(bench, cell, callback=callback)
                CellStore(where).save(cell, record)
                if record["status"] == "ok" and math.isfinite(float(record["metrics"]["dice"])):
                    fits.append(float(record["metrics"]["dice"]))
                else:  # a diverged fit yields no segmenter: it scores what a user would get, nothing
                    fits.append(0.0)
                    trial.set_user_attr(
                        f"episode_{e}{scoring.tag}_failed", str(record.get("reason", "no Dice on the scored slices"))
                    )
            dice = float(np.mean(fits))
            dices.append(dice)
            trial.set_user_attr("episode_dice", dices)
            if spec.pruner == "wilcoxon":
                trial.report(dice, step=e)
            else:
                trial.report(float(np.mean(dices)), step=e)
            if e + 1 < spec.episodes and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after episode {e + 1}: running mean Dice {np.mean(dices):.4f}")
        return float(np.mean(dices))

    return objective


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(spec: TuneSpec, study, split: SelectionSplit, *, console=None, show_progress: bool = True) -> int:
    """Run trials until the study holds ``spec.n_trials`` finished (complete or pruned) trials.

    ``--trials`` counts the whole study, so rerunning the same command after an
    interruption runs only what is missing (a trial a killed process left running is
    re-queued first when there are no heartbeats), and several workers together stop at N
    (each may finish the trial it is in). Returns the number of trials this process ran.
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    if not spec.heartbeat:
        recover_orphans(study)
    remaining = spec.n_trials - finished_count(study)
    if remaining <= 0:
        return 0
    ran = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        disable=not show_progress,
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(
            f"tune {spec.study_name}", total=spec.n_trials, completed=spec.n_trials - remaining, detail=""
        )

        def on_progress(text: str) -> None:
            progress.update(task, detail=text)

        def on_trial(study_, trial) -> None:
            nonlocal ran
            ran += 1
            progress.update(task, completed=min(spec.n_trials, finished_count(study_)))
            value = (
                f"val Dice {trial.value:.4f}" if trial.state == TrialState.COMPLETE and trial.value is not None else ""
            )
            eps = " ".join(f"{d:.3f}" for d in trial.user_attrs.get("episode_dice", []))
            msg = f"trial {trial.number} {trial.state.name.lower()} {value} episodes [{eps}] params {trial.params}"
            if console is not None:
                console.log(msg)
            else:
                log.info(msg)

        objective = make_objective(spec, split, on_progress if show_progress else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=spec.timeout,
                callbacks=[MaxTrialsCallback(spec.n_trials, states=states), on_trial],
                gc_after_trial=False,
            )
    return ran


def best_config(spec: TuneSpec, study) -> tuple[dict, StudyRef]:
    """The resolved config with ``[learners.NAME]`` = the best trial's values and the study's
    draw added to ``[tuned_from]``, and that draw."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(
            f"study {spec.study_name!r} has no complete trial yet (all pruned, failed or running); run more --trials"
        )
    best = study.best_trial
    params = best.user_attrs.get("learner_params") or {
        **spec.config.get("learners", {}).get(spec.learner, {}),
        **best.params,
    }
    cfg = trial_config(spec.config, spec.learner, params)
    this = StudyRef(
        study=spec.study_name,
        storage=redact(spec.storage),
        trial=best.number,
        score_name=score_name(spec.selection),
        score=float(best.value),
        sampler_seed=spec.sampler_seed,
    )
    run = {"selection": spec.selection, "learners": spec.learner, "shots": spec.shots}
    cfg = apply_overrides(
        {**cfg, "tuned_from": TunedFrom.read(spec.config.get("tuned_from")).plus(this).to_config()},
        [
            *(f"run.{key}={json.dumps(value)}" for key, value in run.items()),
            f"run.out={json.dumps(str(Path(spec.out) / 'benchmark'))}",
        ],
    )
    return cfg, this


def score_name(rule: str) -> str:
    """What a study's objective is called in its provenance: ``val Dice``, ``shots Dice``, ..."""
    return "ORACLE test Dice" if is_oracle(rule) else f"{rule} Dice"


def write_best(spec: TuneSpec, study, info: dict) -> Path:
    """Write ``OUT/best.toml``: usable as ``ftbench run --config OUT/best.toml``."""
    from fewshot_transfer.harness.store import atomic_write_text

    cfg, this = best_config(spec, study)
    best = study.best_trial
    oracle = is_oracle(spec.selection)
    header = [
        "# Written by `ftbench tune`. Usable as `ftbench run --config THIS_FILE`.",
        *(["# ORACLE: these values were selected on the TEST SET; an upper bound, not a result."] if oracle else []),
        f"# Tuned: [learners.{spec.learner}] <- {this.text}",
        f"# Selection rule: {spec.selection}; sampler seed {spec.sampler_seed} (stable hash of learner and k);"
        f" {spec.n_trials} random draws.",
        f"# Objective: mean Dice over {spec.episodes} episodes (seeds 0..{spec.episodes - 1}) at k={spec.shots},",
        f"#   scored on: {info.get('scored_on', 'validation split of the support pool')}"
        f" (patients {', '.join(map(str, info['validation']))});",
        f"#   shots drawn from support-pool patients {', '.join(info['tune_support'])}.",
        f"# Per-episode Dice of the best trial: {', '.join(f'{d:.4f}' for d in best.user_attrs.get('episode_dice', []))}",
        "# Every other value is the configuration the study ran with (fixed / rule-based settings).",
        "",
    ]
    path = Path(spec.out) / "best.toml"
    atomic_write_text(path, "\n".join(header) + to_toml(cfg))
    return path


def summary_table(study, top: int = 8, rule: str = DEFAULT_RULE):
    """A rich table of the ``top`` best trials (complete first, by value) and the state counts."""
    from optuna.trial import TrialState
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name.lower(): 0
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    }
    for t in trials:
        key = t.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    table = Table(
        title=f"study {study.study_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v),
        caption=f"score = mean over episodes of the {score_name(rule)} (selection rule {rule})"
        + (" — ORACLE: selected on the test set" if is_oracle(rule) else ""),
    )
    for col in ("#", "state", "score", "episodes", *names):
        table.add_column(col, justify="right" if col not in ("state",) else "left")
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    done.sort(key=lambda t: (t.state != TrialState.COMPLETE, -(t.value if t.value is not None else -1.0)))
    for t in done[:top]:
        eps = t.user_attrs.get("episode_dice", [])
        table.add_row(
            str(t.number),
            t.state.name.lower(),
            f"{t.value:.4f}" if t.state == TrialState.COMPLETE and t.value is not None else "—",
            " ".join(f"{d:.3f}" for d in eps),
            *[_fmt(t.params.get(n)) for n in names],
        )
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
