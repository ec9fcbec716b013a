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
from pathlib import Path

from fewshot_transfer import learners
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
    storage = make_storage(storage_url, heartbeat=None, grace=None)
    tuned = copy.deepcopy(config)
    tuned.setdefault("learners", {})
    provenance: list[str] = []
    outcome: dict[str, str] = {}
    for name in names:
        cls = learners.get(name)
        pinned = dict(config.get("learners", {}).get(name, {}))
        try:
            searched_names(cls, pinned)
        except ValueError as exc:  # nothing left to search: the learner runs as configured
            outcome[name] = f"not tuned ({exc})"
            continue
        spec = TuneSpec(
            learner=name,
            shots=label,
            episodes=int(run["tune_episodes"]),
            val_fraction=VAL_FRACTION,
            config=config,
            storage=storage_url,
            study_name=f"{name}-k{label.replace('%', 'pct')}",
            out=tune_dir,
            sampler_seed=0,
            n_trials=int(run["trials"]),
            heartbeat=None,
            grace=None,
        )
        study = open_study(spec, storage, identity(spec, info, k))
        run_study(spec, study, val_bench, console=console, show_progress=show_progress)
        best, this = best_config(spec, study)
        tuned["learners"][name] = best["learners"][name]
        provenance.append(this)
        outcome[name] = f"{this}: {best['learners'][name]}"
    if provenance:
        tuned["tuned_from"] = "; ".join(provenance)
    return tuned, outcome
