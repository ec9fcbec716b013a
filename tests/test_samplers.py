"""k-shot support sets, shot specs, batch streams and source meta-tasks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fewshot_transfer.data.samplers import (
    labeled_fraction,
    resolve_shots,
    source_meta_tasks,
    support_indices,
    support_pool_size,
)
from fewshot_transfer.data.slices import SliceSet


def make_pool(
    n_patients: int = 8, per_patient: int = 6, *, seed: int = 0, positive: float = 0.5, hw: int = 10
) -> SliceSet:
    """Random slices; about ``positive`` of them carry a lesion blob (at least one per patient)."""
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    masks = np.zeros((n, hw, hw), dtype=np.uint8)
    is_pos = rng.random(n) < positive
    is_pos[::per_patient] = True
    for r in np.flatnonzero(is_pos):
        y, x = rng.integers(0, hw - 3, 2)
        masks[r, y : y + 3, x : x + 3] = 1
    return SliceSet(
        images=rng.random((n, hw, hw), dtype=np.float32),
        masks=masks,
        labeled=np.ones(n, dtype=bool),
        patients=np.array([f"c{i}" for i in range(n_patients) for _ in range(per_patient)]),
        slice_index=np.tile(np.arange(per_patient, dtype=np.int32), n_patients),
        splits=np.full(n, "", dtype="<U8"),
        spacing=np.ones((n, 2), dtype=np.float32),
        name="pool",
    )


def positives(pool: SliceSet) -> np.ndarray:
    return pool.masks.reshape(len(pool), -1).any(1)


def test_support_is_pure_function_of_seed_and_k() -> None:
    pool = make_pool()
    a = support_indices(pool, 5, seed=3)
    support_indices(pool, 20, seed=7)
    support_indices(pool, 1, seed=3)
    assert np.array_equal(a, support_indices(pool, 5, seed=3))
    assert not np.array_equal(a, support_indices(pool, 5, seed=4))


def test_support_independent_of_row_order() -> None:
    pool = make_pool()
    perm = np.random.default_rng(1).permutation(len(pool))
    shuffled = pool.subset(perm)
    a = support_indices(pool, 7, seed=2)
    b = perm[support_indices(shuffled, 7, seed=2)]
    assert np.array_equal(a, b)


def test_support_sets_nested_across_k() -> None:
    pool = make_pool(10, 8)
    for seed in range(5):
        s1, s5, s20 = (support_indices(pool, k, seed=seed) for k in (1, 5, 20))
        assert set(s1) <= set(s5) <= set(s20)
        assert np.array_equal(s20[:5], s5)
        mixed5 = support_indices(pool, 5, seed=seed, include_negative=0.25)
        mixed20 = support_indices(pool, 20, seed=seed, include_negative=0.25)
        assert np.array_equal(mixed20[:5], mixed5)


def test_support_spreads_over_distinct_patients_and_positives_only() -> None:
    pool = make_pool(8, 6)
    pos = positives(pool)
    for seed in range(10):
        for k in (1, 3, 8):
            idx = support_indices(pool, k, seed=seed)
            assert len(idx) == len(set(idx)) == k
            assert len(set(pool.patients[idx])) == k
            assert pos[idx].all()
        idx = support_indices(pool, 12, seed=seed)
        assert len(set(pool.patients[idx])) == 8 and pos[idx].all()


def test_include_negative_fraction() -> None:
    pool = make_pool(8, 6)
    pos = positives(pool)
    idx = support_indices(pool, 8, seed=0, include_negative=0.25)
    assert (~pos[idx]).sum() == 2
    assert list(np.flatnonzero(~pos[idx])) == [3, 7]
    idx = support_indices(pool, 10, seed=0, include_negative=0.5)
    assert (~pos[idx]).sum() == 5
    with pytest.raises(ValueError, match="include_negative"):
        support_indices(pool, 2, seed=0, include_negative=1.5)


def test_k_too_large_error() -> None:
    pool = make_pool(3, 4)
    n_pos = int(positives(pool).sum())
    assert support_pool_size(pool) == n_pos
    support_indices(pool, n_pos, seed=0)
    with pytest.raises(
        ValueError,
        match=rf"k={n_pos + 1} exceeds the support pool \({n_pos} eligible lesion-positive slices from 3 patients.*use 'all'",
    ):
        support_indices(pool, n_pos + 1, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        support_indices(pool, 0, seed=0)


def test_resolve_shots() -> None:
    assert resolve_shots("1,5,20,25%,all", 100) == [("1", 1), ("5", 5), ("20", 20), ("25%", 25), ("all", 100)]
    assert resolve_shots("1, 5,5,10%,all", 50) == [("1", 1), ("5", 5), ("all", 50)]
    assert resolve_shots(["1", 3, "33%"], 10) == [("1", 1), ("3", 3), ("33%", 4)]
    for bad, msg in [
        ("abc", "not a positive integer"),
        ("0", "at least 1"),
        ("150%", r"\(0, 100\]"),
        ("-3", "at least 1"),
        ("x%", "percentage"),
        ("200", "exceeds"),
        ("", "names no shots"),
    ]:
        with pytest.raises(ValueError, match=msg):
            resolve_shots(bad, 100)
    with pytest.raises(ValueError, match="no eligible slices"):
        resolve_shots("1", 0)


def test_labeled_fraction() -> None:
    assert labeled_fraction(5, 20) == 0.25
    with pytest.raises(ValueError):
        labeled_fraction(30, 20)


def test_meta_tasks_disjoint_single_patient_and_deterministic() -> None:
    data = make_pool(6, 6, positive=0.5)
    pos = positives(data)
    tasks = list(itertools.islice(source_meta_tasks(data, n_support=2, n_query=3, seed=4), 15))
    again = list(itertools.islice(source_meta_tasks(data, n_support=2, n_query=3, seed=4), 15))
    for t, u in zip(tasks, again):
        assert np.array_equal(t.support, u.support) and np.array_equal(t.query, u.query) and t.patients == u.patients
        assert len(t.support) == 2 and len(t.query) == 3
        assert not set(t.support) & set(t.query)
        assert set(data.patients[np.concatenate([t.support, t.query])]) == set(t.patients) and len(t.patients) == 1
        if pos[data.rows_of(list(t.patients))].sum() >= 2:
            assert pos[t.support].any() and pos[t.query].any()
    assert {t.patients[0] for t in tasks[:6]} == set(data.patient_ids())


def test_meta_tasks_groups_and_skipping() -> None:
    data = make_pool(6, 3)
    tasks = list(itertools.islice(source_meta_tasks(data, n_support=2, n_query=3, seed=0, group_size=2), 6))
    for t in tasks:
        assert len(t.patients) == 2 and set(data.patients[t.support]) | set(data.patients[t.query]) <= set(t.patients)
    small = data.subset(np.concatenate([data.rows_of(["c0"]), data.rows_of(["c1"])[:1]]))
    tasks = list(itertools.islice(source_meta_tasks(small, n_support=1, n_query=2, seed=0), 4))
    assert all(t.patients == ("c0",) for t in tasks)
    with pytest.raises(ValueError, match="no meta-task can be formed"):
        source_meta_tasks(data, n_support=2, n_query=3, seed=0)
