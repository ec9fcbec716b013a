"""Episode samplers: k-shot support sets and source meta-tasks.

Everything here returns row-index arrays into a :class:`SliceSet` and is a pure function
of its inputs and seed, so every learner of a seed sees the same data (the protocol's
pairing) and any episode can be replayed. No torch; the minibatch streams learners train
on are in :mod:`fewshot_transfer.training.streams`.

Support-set stratification (``support_indices``): only labeled, lesion-positive slices are
eligible by default. One seeded ordering of the pool is built — a seeded order of the
patients, a seeded order of each patient's positive slices, then round-robin over the
patients (first slice of every patient, then the second, ...) — and the k-shot set is its
first k entries. So k shots come from min(k, #patients) distinct patients, and the sets
are nested across k for one seed (1-shot ⊂ 5-shot ⊂ 20-shot), which makes the
transfer-gain-vs-k curve a comparison of growing, not unrelated, support sets.
``include_negative=f`` mixes lesion-free labeled slices in at fixed positions: position
j (1-based) holds a negative when ``floor(j*f) > floor((j-1)*f)`` (every round(1/f)-th
slot), drawn from a negative ordering built the same way; the first k then hold exactly
``floor(k*f)`` negatives, and nesting is kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fewshot_transfer.data.slices import SliceSet


def _positive_rows(pool: SliceSet) -> tuple[np.ndarray, np.ndarray]:
    """(lesion-positive labeled rows, lesion-free labeled rows)."""
    labeled = pool.labeled.astype(bool)
    has_lesion = pool.masks.reshape(len(pool), -1).any(axis=1)
    return np.flatnonzero(labeled & has_lesion), np.flatnonzero(labeled & ~has_lesion)


def _round_robin(pool: SliceSet, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Seeded patient order, seeded slice order per patient, interleaved across patients.

    Rows are first put in canonical (patient, slice_index, row) order so the result does
    not depend on how the pool's rows happen to be arranged.
    """
    if rows.size == 0:
        return rows
    patients = pool.patients[rows].astype(str)
    canon = rows[np.lexsort((rows, pool.slice_index[rows], patients))]
    patients = pool.patients[canon].astype(str)
    ids = sorted(set(patients.tolist()))
    per_patient = [canon[patients == p] for p in ids]
    per_patient = [r[rng.permutation(r.size)] for r in per_patient]
    order = rng.permutation(len(ids))
    depth = max(r.size for r in per_patient)
    out = [per_patient[i][d] for d in range(depth) for i in order if d < per_patient[i].size]
    return np.asarray(out, dtype=np.int64)


def _negative_slots(m: int, include_negative: float) -> np.ndarray:
    """Boolean [m]: which of the first m positions hold a lesion-free slice."""
    j = np.arange(1, m + 1)
    return np.floor(j * include_negative) > np.floor((j - 1) * include_negative)


def support_pool_size(pool: SliceSet, include_negative: float = 0.0) -> int:
    """Largest k that :func:`support_indices` accepts for this pool (the size 'all' refers to)."""
    _check_negative_fraction(include_negative)
    pos, neg = _positive_rows(pool)
    if include_negative == 0.0:
        return int(pos.size)
    ks = np.arange(1, pos.size + neg.size + 1)
    n_neg = np.floor(ks * include_negative)
    ok = (ks - n_neg <= pos.size) & (n_neg <= neg.size)
    return int(np.argmin(ok)) if not ok.all() else int(ks.size)


def _check_negative_fraction(include_negative: float) -> None:
    if not 0.0 <= include_negative < 1.0:
        raise ValueError(f"include_negative must be a fraction in [0, 1), got {include_negative}")


def support_indices(pool: SliceSet, k: int, *, seed: int, include_negative: float = 0.0) -> np.ndarray:
    """Row indices of the k-shot support set for ``seed`` (stratification in module docstring).

    A pure function of (pool, k, seed, include_negative): every learner of a seed gets the
    same shots, and smaller k are prefixes of larger k.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    _check_negative_fraction(include_negative)
    pos, neg = _positive_rows(pool)
    limit = support_pool_size(pool, include_negative)
    if k > limit:
        n_pat = len(set(pool.patients[pos].tolist()))
        extra = (
            f" and {neg.size} lesion-free slices at include_negative={include_negative}" if include_negative > 0 else ""
        )
        raise ValueError(
            f"k={k} exceeds the support pool ({pos.size} eligible lesion-positive slices from {n_pat} patients"
            f"{extra}; at most k={limit}); lower k or use 'all'"
        )
    rng = np.random.default_rng(seed)
    pos_order = _round_robin(pool, pos, rng)
    neg_order = _round_robin(pool, neg, rng)
    slots = _negative_slots(k, include_negative)
    out = np.empty(k, dtype=np.int64)
    out[~slots] = pos_order[: int((~slots).sum())]
    out[slots] = neg_order[: int(slots.sum())]
    return out


def resolve_shots(spec: str | list, pool_size: int) -> list[tuple[str, int]]:
    """Parse a shots spec such as ``"1,5,20,25%,all"`` into ``[(label, k), ...]``.

    Percentages round up (``ceil(p/100 * pool_size)``, at least 1); ``all`` is the whole
    eligible pool. Duplicates by k are dropped, keeping the first label.
    """
    if pool_size < 1:
        raise ValueError(f"the support pool has no eligible slices (pool_size={pool_size}); no shots can be drawn")
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[tuple[str, int]] = []
    seen: set[int] = set()
    for item in items:
        label = str(item).strip()
        if not label:
            continue
        low = label.lower()
        if low == "all":
            k = pool_size
        elif low.endswith("%"):
            try:
                pct = float(low[:-1])
            except ValueError:
                raise ValueError(f"shots entry {label!r} is not a percentage like '25%'") from None
            if not 0.0 < pct <= 100.0:
                raise ValueError(f"shots entry {label!r}: a percentage must be in (0, 100]")
            k = max(1, math.ceil(pct / 100.0 * pool_size - 1e-9))
        else:
            try:
                k = int(low)
            except ValueError:
                raise ValueError(
                    f"shots entry {label!r} is not a positive integer, a percentage ('25%') or 'all'"
                ) from None
            if k < 1:
                raise ValueError(f"shots entry {label!r}: k must be at least 1")
            if k > pool_size:
                raise ValueError(
                    f"shots entry {label!r} exceeds the support pool ({pool_size} eligible slices); "
                    "lower k or use 'all'"
                )
        if k not in seen:
            seen.add(k)
            out.append((label, k))
    if not out:
        raise ValueError(f"shots spec {spec!r} names no shots; use e.g. '1,5,20,all'")
    return out


def labeled_fraction(k: int, pool_size: int) -> float:
    """k / size of the support pool (the protocol's x-axis next to k)."""
    if pool_size < 1:
        raise ValueError(f"pool_size must be positive, got {pool_size}")
    if not 0 <= k <= pool_size:
        raise ValueError(f"k={k} is outside [0, pool_size={pool_size}]")
    return k / pool_size


@dataclass(frozen=True)
class MetaTask:
    """One source meta-learning task: disjoint support / query rows from one patient (group)."""

    support: np.ndarray
    query: np.ndarray
    patients: tuple[str, ...]


def _draw_task(
    rows: np.ndarray, positive: np.ndarray, n_support: int, n_query: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split one unit's rows into support/query, lesion-positive slices first.

    With two or more positives, both sides get at least one, in proportion to their sizes.
    """
    pos = rows[positive[rows]]
    neg = rows[~positive[rows]]
    pos = pos[rng.permutation(pos.size)]
    neg = neg[rng.permutation(neg.size)]
    total = min(pos.size, n_support + n_query)
    if total >= 2:
        q_pos = int(np.clip(round(total * n_query / (n_support + n_query)), 1, min(n_query, total - 1)))
        s_pos = min(n_support, total - q_pos)
        q_pos = min(n_query, total - s_pos)
    else:
        s_pos, q_pos = total, 0
    s_neg, q_neg = n_support - s_pos, n_query - q_pos
    support = np.concatenate([pos[:s_pos], neg[:s_neg]])
    query = np.concatenate([pos[s_pos : s_pos + q_pos], neg[s_neg : s_neg + q_neg]])
    return support.astype(np.int64), query.astype(np.int64)


def source_meta_tasks(
    data: SliceSet, *, n_support: int, n_query: int, seed: int, group_size: int = 1
) -> Iterator[MetaTask]:
    """Infinite, seeded stream of source meta-tasks (one patient, or a group, per task).

    Each pass visits the patients (or freshly shuffled groups of ``group_size`` patients)
    in a seeded order; units with fewer than ``n_support + n_query`` labeled slices are
    skipped. Raises ValueError up front when no unit can ever qualify.
    """
    if n_support < 1 or n_query < 1:
        raise ValueError(f"n_support and n_query must be positive, got {n_support} and {n_query}")
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    need = n_support + n_query
    lab_rows = np.flatnonzero(data.labeled.astype(bool))
    patients = data.patients.astype(str)
    ids = sorted(set(patients[lab_rows].tolist()))
    rows_by = {p: lab_rows[patients[lab_rows] == p] for p in ids}
    sizes = sorted((r.size for r in rows_by.values()), reverse=True)
    if len(ids) < group_size or sum(sizes[:group_size]) < need:
        raise ValueError(
            f"dataset {data.name!r}: no meta-task can be formed: tasks need {need} labeled slices "
            f"(n_support={n_support} + n_query={n_query}) from {group_size} patient(s), but the "
            f"{len(ids)} labeled patients have at most {max(sizes, default=0)} labeled slices each; "
            "lower n_support/n_query or raise group_size"
        )
    positive = data.masks.reshape(len(data), -1).any(axis=1) & data.labeled.astype(bool)
    return _meta_task_stream(ids, rows_by, positive, n_support, n_query, group_size, seed)


def _meta_task_stream(
    ids: list[str],
    rows_by: dict[str, np.ndarray],
    positive: np.ndarray,
    n_support: int,
    n_query: int,
    group_size: int,
    seed: int,
) -> Iterator[MetaTask]:
    rng = np.random.default_rng(seed)
    need = n_support + n_query
    while True:
        order = [ids[i] for i in rng.permutation(len(ids))]
        n_units = len(order) // group_size
        for u in range(n_units):
            group = tuple(sorted(order[u * group_size : (u + 1) * group_size]))
            rows = np.sort(np.concatenate([rows_by[p] for p in group]))
            if rows.size < need:
                continue
            support, query = _draw_task(rows, positive, n_support, n_query, rng)
            yield MetaTask(support=support, query=query, patients=group)
