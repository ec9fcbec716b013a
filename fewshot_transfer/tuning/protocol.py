"""``ftbench run --protocol tuned``: the same hyperparameter search for every learner.

A default picked on one scenario's test set favours the learner it was picked for. Under
this protocol every learner of the grid gets an Optuna study with the same number of
trials, the same episodes and the same objective (mean validation Dice at one k, the
validation split carved from the target support pool by
:func:`~fewshot_transfer.tuning.study.validation_benchmark`, never the test set); the grid
then runs with each learner's best trial. Learners with nothing to search (source-only)
keep their defaults.

The studies live in ``OUT/tuning/study.db`` (one study per learner, ``NAME-kK``) with the
tuning split in ``OUT/tuning/split.json``, so rerunning the command resumes them (a
finished study runs no new trial) and yields the same parameters.
"""

from __future__ import annotations

import copy
import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from fewshot_transfer import learners
from fewshot_transfer.harness.parallel import resolve_jobs
from fewshot_transfer.tuning.space import searched_names
from fewshot_transfer.tuning.storage import default_storage, make_storage
from fewshot_transfer.tuning.study import TuneSpec, best_config, identity, open_study, run_study
from fewshot_transfer.tuning.validation import validation_benchmark

log = logging.getLogger(__name__)

PROTOCOLS = ("defaults", "tuned")
#: Share of the support pool's patients that score the trials (as ``ftbench tune``).
VAL_FRACTION = 0.5


def tuning_shots(shots: list[tuple[str, int]], spec: str = "") -> str:
    """The k the studies tune at: ``spec`` when given, else the grid's middle k >= 1 (one
    study per learner; a k-specific optimum would need a study per cell)."""
    if spec:
        return spec
    positive = [label for label, k in sorted(shots, key=lambda t: t[1]) if k > 0]
    if not positive:
        raise ValueError("--protocol tuned needs a k >= 1 to tune at; add one to --shots or give --tune-shots")
    return positive[len(positive) // 2]


def tune_learners(
    config: dict, names: list[str], out: Path, *, console=None, show_progress: bool = True
) -> tuple[dict, dict[str, str]]:
    """Run (or resume) one study per learner with ``run.trials`` trials; return the config with
    ``[learners.NAME]`` = each learner's best trial and ``tuned_from`` naming the studies,
    plus a one-line outcome per learner."""
    import optuna

    from fewshot_transfer.harness.benchmark import prepare

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = config["run"]
    tune_dir = Path(out) / "tuning"
    bench = prepare(config, tune_dir)
    val_bench, info = validation_benchmark(
        bench,
        tuning_shots(bench.shots, str(run.get("tune_shots") or "")),
        val_fraction=VAL_FRACTION,
        seed=int(config["data"]["split"]["seed"]),
    )
    label, k = val_bench.shots[0]
    storage_url = default_storage(tune_dir)
    make_storage(storage_url, heartbeat=None, grace=None)  # create the schema once, before workers race
    tuned = copy.deepcopy(config)
    tuned.setdefault("learners", {})
    provenance: list[str] = []
    outcome: dict[str, str] = {}
    jobs = resolve_jobs(int(run.get("jobs") or 0), len(names))
    if jobs > 1:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_tune_one, config, name, str(out), label, k, info, False): name for name in names}
            if console is not None:
                console.print(f"tuning {len(names)} learners in {jobs} processes (one study each, no live progress)")
            done: dict[str, tuple] = {}
            for fut in as_completed(futures):
                done[futures[fut]] = fut.result()
                if console is not None:
                    console.print(f"  study finished: {futures[fut]} ({len(done)}/{len(names)})")
            results = [done[name] for name in names]
    else:
        results = [
            _tune_one(config, name, str(out), label, k, info, show_progress, console, val_bench) for name in names
        ]
    for name, best, this in results:
        if best is None:
            outcome[name] = this
            continue
        tuned["learners"][name] = best
        provenance.append(this)
        outcome[name] = f"{this}: {best}"
    if provenance:
        tuned["tuned_from"] = "; ".join(provenance)
    return tuned, outcome


def _tune_one(
    config: dict,
    name: str,
    out: str,
    label: str,
    k: int,
    info: dict,
    show_progress: bool,
    console=None,
    val_bench=None,
) -> tuple[str, dict | None, str]:
    """One learner's study, run or resumed: (name, best [learners.NAME] table or None, provenance
    or why it was not tuned). Top-level so that ``--jobs`` can run the studies side by side,
    one single-threaded process each: studies are independent (own sampler seed), so the
    parameters do not depend on the number of jobs. A worker process builds its own
    validation benchmark; in-process the caller's ``val_bench`` is reused."""
    import optuna
    import torch

    from fewshot_transfer.harness.benchmark import prepare

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if int(config["run"].get("threads") or 0) > 0:
        torch.set_num_threads(int(config["run"]["threads"]))
    learners.load_plugins(config["run"].get("plugins", []))
    cls = learners.get(name)
    pinned = dict(config.get("learners", {}).get(name, {}))
    try:
        searched_names(cls, pinned)
    except ValueError as exc:  # nothing left to search: the learner runs as configured
        return name, None, f"not tuned ({exc})"
    tune_dir = Path(out) / "tuning"
    if val_bench is None:
        val_bench, _ = validation_benchmark(
            prepare(config, tune_dir), label, val_fraction=VAL_FRACTION, seed=int(config["data"]["split"]["seed"])
        )
    storage_url = default_storage(tune_dir)
    storage = make_storage(storage_url, heartbeat=None, grace=None)
    spec = TuneSpec(
        learner=name,
        shots=label,
        episodes=int(config["run"]["tune_episodes"]),
        val_fraction=VAL_FRACTION,
        config=config,
        storage=storage_url,
        study_name=f"{name}-k{label.replace('%', 'pct')}",
        out=tune_dir,
        sampler_seed=0,
        n_trials=int(config["run"]["trials"]),
        heartbeat=None,
        grace=None,
    )
    study = open_study(spec, storage, identity(spec, info, k))
    run_study(spec, study, val_bench, console=console, show_progress=show_progress)
    best, this = best_config(spec, study)
    return name, best["learners"][name], this
