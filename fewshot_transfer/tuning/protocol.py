"""``ftbench run --protocol tuned``: the same hyperparameter search for every learner, per k.

A default picked on one scenario's test set favours the learner it was picked for. Under
this protocol every learner of the grid gets, **at every k it runs at** (k = 0 included for
learners that run there), an Optuna study with the same budget — ``run.trials`` random
draws, the same episodes — scored by the selection rule ``run.selection``
(``harness/selection.py``: ``val``, ``shots``, ``source-val`` or ``oracle``); the cells of
each k then run with that k's best draw (``[learners."NAME@k=K"]`` in the run's config).
A setting chosen at k = 5 says nothing about k = 0, where an adversarial learner's game is
the only thing it does. ``run.tune_shots = K`` instead tunes once at K for every k (the
earlier rule; the leaderboard says so). Learners with nothing to search (source-only), and
``shots`` at k = 1 (nothing to hold out), keep their defaults.

The studies live in ``OUT/tuning/study.db`` (``NAME-kK`` for ``val``, ``NAME-kK-RULE``
otherwise) with the tuning split in ``OUT/tuning/split.json``, so rerunning the command
resumes them (a finished study runs no new trial; a trial a killed run left RUNNING is
re-queued) and yields the same parameters.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from fewshot_transfer import learners
from fewshot_transfer.config import k_key
from fewshot_transfer.harness.parallel import resolve_jobs
from fewshot_transfer.harness.selection import DEFAULTS, applied_rule, caveat, check_rule, study_name
from fewshot_transfer.plan import RunPlan, StudyRef, TunedFrom
from fewshot_transfer.tuning.space import searched_names
from fewshot_transfer.tuning.storage import default_storage, make_storage
from fewshot_transfer.tuning.study import TuneSpec, best_config, identity, open_study, run_study
from fewshot_transfer.tuning.validation import selection_split

log = logging.getLogger(__name__)

PROTOCOLS = ("defaults", "tuned")
#: Share of the support pool's patients that score the trials under ``val`` (as ``ftbench tune``).
VAL_FRACTION = 0.5


@dataclass(frozen=True)
class StudyTask:
    """One study of the protocol: a learner at one k under the rule that applies there."""

    learner: str
    label: str
    k: int
    rule: str


def tuning_shots(shots: list[tuple[str, int]], spec: str = "") -> str:
    """The one k of ``run.tune_shots`` mode: ``spec`` when given, else the grid's middle k >= 1."""
    if spec:
        return spec
    positive = [label for label, k in sorted(shots, key=lambda t: t[1]) if k > 0]
    if not positive:
        raise ValueError("--protocol tuned needs a k >= 1 to tune at; add one to --shots or give --tune-shots")
    return positive[len(positive) // 2]


def plan_studies(plan: RunPlan, names: list[str], shots: list[tuple[str, int]]) -> tuple[list[StudyTask], dict]:
    """The studies to run, and why each learner or k that gets none keeps its defaults."""
    rule = check_rule(plan.run.selection or "val")
    if plan.run.tune_shots:
        label = tuning_shots(shots, plan.run.tune_shots)
        ks = [(label, next((k for lab, k in shots if lab == label), -1))]
    else:
        ks = list(shots)
    tasks: list[StudyTask] = []
    skipped: dict[str, str] = {}
    if warning := next(filter(None, (caveat(rule, k) for _label, k in ks)), ""):
        log.warning(warning)
    for name in names:
        cls = learners.get(name)
        if cls.control_of:  # a control arm runs with its learner's tuned draw, mechanism off
            skipped[name] = f"not tuned (the control arm of {cls.control_of} takes its parameters)"
            continue
        try:
            searched_names(cls, dict(plan.learner_tables.get(name, {})))
        except ValueError as exc:  # nothing left to search: the learner runs as configured
            skipped[name] = f"not tuned ({exc})"
            continue
        for label, k in ks:
            if k == 0 and not cls.supports_k0:
                continue
            used = applied_rule(rule, k) if k >= 0 else rule
            if used == DEFAULTS:
                skipped[f"{name} k={label}"] = f"defaults ({rule} rule: k = {label} leaves nothing to hold out)"
                continue
            tasks.append(StudyTask(name, label, k, used))
    return tasks, skipped


def tune_learners(
    config: dict, names: list[str], out: Path, *, console=None, show_progress: bool = True
) -> tuple[dict, dict[str, str]]:
    """Run (or resume) the studies of :func:`plan_studies`; return the config with each study's best
    draw (``[learners."NAME@k=K"]``, or ``[learners.NAME]`` with ``run.tune_shots``) and
    ``tuned_from`` naming the studies, plus a one-line outcome per study."""
    import optuna

    from fewshot_transfer.harness.rundir import open_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune_dir = Path(out) / "tuning"
    bench = open_run(config, tune_dir, check=False, write_config=False)  # studies' folder, not a run's
    run = bench.plan.run
    tasks, outcome = plan_studies(bench.plan, names, bench.shots)
    make_storage(default_storage(tune_dir), heartbeat=None, grace=None)  # the schema once, before workers race
    tuned = copy.deepcopy(config)
    tuned.setdefault("learners", {})
    provenance = TunedFrom()
    jobs = resolve_jobs(run.jobs, len(tasks))
    if jobs > 1:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_tune_one, config, task, str(out), False): task for task in tasks}
            if console is not None:
                console.print(f"tuning: {len(tasks)} studies in {jobs} processes (no live progress)")
            done: dict[StudyTask, tuple] = {}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                if console is not None:
                    console.print(f"  study finished: {study_name(*_name_of(futures[fut]))} ({len(done)}/{len(tasks)})")
            results = [done[task] for task in tasks]
    else:
        results = [_tune_one(config, task, str(out), show_progress, console, bench) for task in tasks]
    single = bool(run.tune_shots)
    for task, (best, this) in zip(tasks, results):
        key = task.learner if single else k_key(task.learner, task.k)
        tuned["learners"][key] = best
        provenance = provenance.plus(this)
        outcome[f"{task.learner} k={task.label}"] = f"{this.text}: {best}"
    if provenance:
        tuned["tuned_from"] = provenance.to_config()
    return tuned, outcome


def _name_of(task: StudyTask) -> tuple[str, str, str]:
    return task.learner, task.label, task.rule


def _tune_one(
    config: dict, task: StudyTask, out: str, show_progress: bool, console=None, bench=None
) -> tuple[dict, StudyRef]:
    """One study, run or resumed: (best ``[learners.NAME]`` table, provenance). Top-level so that
    ``--jobs`` can run studies side by side, one single-threaded process each: studies are
    independent (own sampler seed, own draws), so the parameters do not depend on the number
    of jobs. A worker process prepares its own benchmark; in-process the caller's is reused."""
    import optuna

    from fewshot_transfer.harness.rundir import open_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune_dir = Path(out) / "tuning"
    if bench is None:  # a process of its own (--jobs): set up like every cell's process
        bench = open_run(config, tune_dir, check=False, write_config=False)
    split = selection_split(
        bench, task.rule, task.label, val_fraction=VAL_FRACTION, seed=int(bench.plan.data.split["seed"])
    )
    storage_url = default_storage(tune_dir)
    storage = make_storage(storage_url, heartbeat=None, grace=None)
    spec = TuneSpec(
        learner=task.learner,
        shots=task.label,
        episodes=bench.plan.run.tune_episodes,
        val_fraction=VAL_FRACTION,
        config=config,
        storage=storage_url,
        study_name=study_name(*_name_of(task)),
        out=tune_dir,
        n_trials=bench.plan.run.trials,
        heartbeat=None,
        grace=None,
        selection=task.rule,
    )
    study = open_study(spec, storage, identity(spec, split.info, split.k))
    run_study(spec, study, split, console=console, show_progress=show_progress)
    best, this = best_config(spec, study)
    return best["learners"][task.learner], this
