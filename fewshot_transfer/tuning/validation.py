"""The validation split a study scores on, carved by patient from the target support pool.

The target **support pool** (the patients the benchmark draws shots from) is split once,
by patient, into a *tuning-support* part and a *validation* part (seeded, lesion-burden
stratified with :func:`fewshot_transfer.data.splits.split_target`, checked with the leakage
guard against the test set and the unlabeled pool). A trial writes the sampled values into
``config["learners"][NAME]`` and runs ``run_cell`` on a copy of the benchmark whose
support pool is the tuning-support part and whose "test" set is the validation part's
labeled slices, once per episode (seed 0..E-1). The objective is the mean over episodes of
the validation Dice (mean over lesion-positive slices, the leaderboard's Dice). The test set
is never loaded into a trial.

Every trial sees the same episodes (seed e draws the same k shots from the tuning-support
pool and reuses the same cached source pretraining), so the trials are compared *paired*.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def validation_benchmark(bench, shots: str, *, val_fraction: float = 0.5, seed: int = 0):
    """A copy of ``bench`` whose support pool is the tuning part of the support pool and
    whose ``test_set`` is the validation part's labeled slices (patient-disjoint).

    Returns ``(val_bench, info)``; ``info`` names the patients of each part. ``shots`` is
    one k as in ``--shots``: a count, or a percentage / ``all`` of the tuning-support pool.
    """
    from fewshot_transfer.data.samplers import resolve_shots
    from fewshot_transfer.data.splits import check_disjoint, split_target

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    pool = bench.support_pool
    patients = pool.patient_ids()
    if len(patients) < 2:
        raise ValueError(
            f"the support pool has {len(patients)} patient(s); tuning needs at least 2 "
            "(one part for the shots, one for validation); raise data.split.support"
        )
    try:
        part = split_target(pool, fractions=(1.0 - val_fraction, 0.0, val_fraction), seed=seed)
    except ValueError as exc:
        raise ValueError(
            f"cannot carve a validation split from the support pool ({len(patients)} patients): {exc}"
        ) from exc
    tune_p, val_p = tuple(part.support), tuple(part.test)
    # Anything not placed (there are no unlabeled rows in the support pool) stays out.
    check_disjoint(
        {
            "tune-support": tune_p,
            "validation": val_p,
            "test": bench.split.test,
            "unlabeled": bench.split.unlabeled,
        }
    )
    tune_pool = pool.subset(pool.rows_of(list(tune_p)))
    val = pool.subset(pool.rows_of(list(val_p)))
    val = val.subset(np.flatnonzero(val.labeled))
    if not (val.lesion_fraction() > 0).any():
        raise ValueError(
            f"the validation patients {list(val_p)} have no lesion-positive labeled slice; "
            "try another --val-fraction or data.split.seed"
        )
    val_bench = dataclasses.replace(
        bench,
        support_pool=tune_pool,
        test_set=val,
        split=dataclasses.replace(bench.split, support=tune_p, test=val_p),
        shots=[],
        _supports={},
    )
    resolved = resolve_shots(str(shots), val_bench.eligible)
    if len(resolved) != 1:
        raise ValueError(f"--shots must be one k for tuning (one study per k), got {shots!r}")
    label, k = resolved[0]
    val_bench.shots = [(label, k)]
    info = {
        "tune_support": list(tune_p),
        "validation": list(val_p),
        "validation_slices": len(val),
        "tune_support_eligible": val_bench.eligible,
        "excluded_test": list(bench.split.test),
        "val_fraction": val_fraction,
        "seed": seed,
    }
    return val_bench, info
