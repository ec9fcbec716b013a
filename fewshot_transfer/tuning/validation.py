"""What a study scores on, per selection rule (``harness/selection.py``): :func:`selection_split`.

``val`` scores the validation split carved by patient from the target support pool (below);
``shots`` the two folds of the k shots (:func:`shot_folds`); ``source-val`` the source
validation split; ``oracle`` the test set.

The ``val`` split:

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
from collections.abc import Callable

import numpy as np

from fewshot_transfer.harness.selection import applied_rule, check_rule


def validation_benchmark(bench, shots: str, *, val_fraction: float = 0.5, seed: int = 0):
    """A copy of ``bench`` whose support pool is the tuning part of the support pool and
    whose ``test_set`` is the validation part's labeled slices (patient-disjoint).

    Returns ``(val_bench, info)``; ``info`` names the patients of each part. ``shots`` is
    one k as in ``--shots``: a count, or a percentage / ``all`` of the tuning-support pool.
    """
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
    label, k = one_k(shots, val_bench.eligible)
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


def one_k(shots: str, pool_size: int) -> tuple[str, int]:
    """``--shots`` of a study: one k (``0`` = no target labels, a count, a percentage, ``all``)."""
    from fewshot_transfer.harness.benchmark import resolve_grid_shots

    resolved = resolve_grid_shots(str(shots), pool_size)
    if len(resolved) != 1:
        raise ValueError(f"--shots must be one k for tuning (one study per k), got {shots!r}")
    return resolved[0]


@dataclasses.dataclass
class Scoring:
    """One fit + evaluation inside a trial episode: train on ``bench``'s (k, seed) shots, score
    its ``test_set``; ``tag`` keeps the cell files of the folds of one episode apart."""

    bench: object
    k: int
    k_label: str
    seed: int
    tag: str = ""


@dataclasses.dataclass
class SelectionSplit:
    """What a study of one rule scores: ``episode(seed)`` lists the fits of one episode, whose mean
    Dice is the episode's value (one fit for ``val`` / ``source-val`` / ``oracle``, one per fold
    for ``shots``). ``info`` names the data each part comes from (stored on the study)."""

    rule: str
    label: str
    k: int
    info: dict
    episode: Callable[[int], list[Scoring]]


def selection_split(bench, rule: str, shots: str, *, val_fraction: float = 0.5, seed: int = 0) -> SelectionSplit:
    """The scoring data of ``rule`` (``harness/selection.py``) at one k of ``bench``.

    * ``val``: :func:`validation_benchmark` (shots from one half of the support pool's patients,
      scored on the other half's labeled slices);
    * ``source-val``: the grid's own (k, seed) shots from the whole support pool, scored on the
      labeled source validation split;
    * ``oracle``: the grid's own shots, scored on the test set;
    * ``shots``: the grid's own k shots of the episode's seed, 2-fold (:func:`shot_folds`).
    """
    rule = check_rule(rule)
    label, k = one_k(shots, bench.eligible)
    used = applied_rule(rule, k)
    if used == "defaults":
        raise ValueError(
            f"the {rule} rule has nothing to score at k = {label} (one shot cannot be split into folds): "
            "tune at --shots 2 or more, or use --selection val; `ftbench run --protocol tuned` keeps the code "
            "defaults there"
        )
    if used == "val":
        val_bench, info = validation_benchmark(bench, label, val_fraction=val_fraction, seed=seed)
        vlabel, vk = val_bench.shots[0]
        info = {**info, "rule": used, "scored_on": "validation split of the support pool (more labels than k)"}
        return SelectionSplit(used, label, k, info, lambda e: [Scoring(val_bench, vk, vlabel, e)])
    base = dataclasses.replace(bench, shots=[(label, k)], _supports={})
    info = {
        "rule": used,
        "tune_support": sorted(bench.split.support),
        "tune_support_eligible": bench.eligible,
        "excluded_test": list(bench.split.test),
        "seed": seed,
    }
    if used == "oracle":
        info.update(validation=sorted(bench.split.test), validation_slices=len(bench.test_set))
        info["scored_on"] = "ORACLE: the test set"
        return SelectionSplit(used, label, k, info, lambda e: [Scoring(base, k, label, e)])
    if used == "source-val":
        src = bench.source_val.subset(np.flatnonzero(bench.source_val.labeled))
        if not (src.lesion_fraction() > 0).any():
            raise ValueError("the source validation split has no lesion-positive slice; raise data.split.source_val")
        scored = dataclasses.replace(base, test_set=src)
        info.update(validation=sorted(src.patient_ids()), validation_slices=len(src))
        info["scored_on"] = "source validation split (no target labels)"
        return SelectionSplit(used, label, k, info, lambda e: [Scoring(scored, k, label, e)])
    info.update(validation=["the held-out half of the k shots"], validation_slices=k)
    info["scored_on"] = "2-fold over the k shots (by patient where possible)"
    return SelectionSplit(used, label, k, info, lambda e: shot_folds(base, k, label, e))


def fold_of_shots(patients: np.ndarray) -> np.ndarray:
    """Fold 0 / 1 of each shot: patients dealt alternately in order of first appearance (the
    shots are drawn round-robin over patients), or the shots alternately when they come from
    one patient only, so both folds hold at least one shot."""
    order = list(dict.fromkeys(patients.tolist()))
    if len(order) >= 2:
        return np.array([order.index(p) % 2 for p in patients.tolist()], dtype=np.int64)
    return np.arange(len(patients), dtype=np.int64) % 2


def shot_folds(bench, k: int, label: str, seed: int) -> list[Scoring]:
    """The two folds of the (k, seed) shots: train on one half, score the other (both ways).

    The held-out shots leave the support pool of the fold, so they are in no pool a learner
    sees (not even as unlabeled slices); the train half keeps its place in the pool.
    """
    if k < 2:
        raise ValueError(f"2-fold selection over the shots needs k >= 2, got k = {k}")
    idx = bench.shot_rows(k, seed)
    pool = bench.support_pool
    folds = fold_of_shots(pool.patients[idx])
    out: list[Scoring] = []
    for f in (0, 1):
        held, train = idx[folds == f], idx[folds != f]
        keep = np.setdiff1d(np.arange(len(pool)), held)
        reduced = pool.subset(keep)
        train_rows = np.searchsorted(keep, train)
        scored = pool.subset(held)
        fold_bench = dataclasses.replace(
            bench,
            support_pool=reduced,
            test_set=dataclasses.replace(scored, native=None),
            shots=[(f"{label}-fold{f}", len(train))],
            _supports={(len(train), seed): (train_rows, reduced.subset(train_rows))},
        )
        out.append(Scoring(fold_bench, len(train), f"{label}-fold{f}", seed, f"fold{f}"))
    return out
