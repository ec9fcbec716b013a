"""Patient-disjoint target/source splits, the leakage guard and the split file."""

from __future__ import annotations

import numpy as np
import pytest

from fewshot_transfer.data.slices import SliceSet
from fewshot_transfer.data.splits import (
    LeakageError,
    TargetSplit,
    check_disjoint,
    has_own_test_split,
    load_split,
    save_split,
    split_source,
    split_target,
    verify_split,
)


def make_slices(
    n_patients: int = 10,
    per_patient: int = 4,
    *,
    seed: int = 0,
    positive: float = 0.6,
    splits: dict[str, str] | None = None,
    unlabeled_patients: tuple[str, ...] = (),
    hw: int = 12,
) -> SliceSet:
    """Small random slices; lesion-positive ones carry a square blob."""
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    images = rng.random((n, hw, hw), dtype=np.float32)
    masks = np.zeros((n, hw, hw), dtype=np.uint8)
    patients = np.array([f"p{i:02d}" for i in range(n_patients) for _ in range(per_patient)])
    for r in range(n):
        if rng.random() < positive:
            y, x, s = rng.integers(0, hw - 4), rng.integers(0, hw - 4), rng.integers(1, 4)
            masks[r, y : y + s, x : x + s] = 1
    labeled = ~np.isin(patients, list(unlabeled_patients))
    masks[~labeled] = 0
    split_col = np.array([(splits or {}).get(p, "") for p in patients], dtype="<U16")
    return SliceSet(
        images=images,
        masks=masks,
        labeled=labeled,
        patients=patients,
        slice_index=np.tile(np.arange(per_patient, dtype=np.int32), n_patients),
        splits=split_col,
        spacing=np.full((n, 2), 0.8, dtype=np.float32),
        name="toy",
        fingerprint=f"fp{seed}",
    )


def test_pools_are_disjoint_and_cover_all_patients_over_many_seeds() -> None:
    data = make_slices(13, 3, unlabeled_patients=("p12",))
    for seed in range(40):
        s = split_target(data, seed=seed)
        pools = [set(s.support), set(s.unlabeled), set(s.test)]
        assert all(pools), f"seed {seed}: an empty pool {s}"
        assert sum(len(p) for p in pools) == len(set().union(*pools)) == 13
        assert "p12" in s.unlabeled
        pooled = s.pools(data)
        assert {p for ss in pooled.values() for p in ss.patient_ids()} <= set(data.patient_ids())


def test_split_is_fixed_by_seed_and_changes_with_it() -> None:
    data = make_slices(20, 2)
    assert split_target(data, seed=3) == split_target(data, seed=3)
    assert len({split_target(data, seed=s).test for s in range(10)}) > 1


def test_fractions_respected_and_positive_patients_in_support_and_test() -> None:
    data = make_slices(20, 3, positive=0.0)
    masks = data.masks.copy()
    for p in ("p03", "p11"):  # only two lesion-positive patients in the whole set
        masks[data.rows_of([p])[0], 2:5, 2:5] = 1
    data = SliceSet(**{**data.__dict__, "masks": masks})
    for seed in range(20):
        s = split_target(data, fractions=(0.4, 0.2, 0.4), seed=seed)
        assert (len(s.support), len(s.unlabeled), len(s.test)) == (8, 4, 8)
        assert {"p03", "p11"} <= set(s.support) | set(s.test)
        assert set(s.support) & {"p03", "p11"} and set(s.test) & {"p03", "p11"}


def test_check_disjoint_names_patient_and_pools() -> None:
    check_disjoint({"a": ["x", "y"], "b": ["z"]})
    with pytest.raises(LeakageError, match=r"'p07'.*'support'.*'test'"):
        check_disjoint({"support": ["p01", "p07"], "unlabeled": ["p02"], "test": ["p07"]})


def test_pools_guard_against_hand_edited_leaky_split() -> None:
    data = make_slices(6, 2)
    s = split_target(data, seed=0)
    leaky = TargetSplit(s.support, s.unlabeled, s.test + (s.support[0],), s.seed, s.fractions, s.dataset_fingerprint)
    with pytest.raises(LeakageError, match=s.support[0]):
        leaky.pools(data)


def test_pools_content_labels_stripped_from_unlabeled() -> None:
    data = make_slices(10, 3, unlabeled_patients=("p09",))
    pools = split_target(data, seed=1).pools(data)
    assert pools["support"].labeled.all() and pools["test"].labeled.all()
    assert not pools["unlabeled"].labeled.any() and pools["unlabeled"].masks.sum() == 0
    assert sum(len(p) for p in pools.values()) == len(data)


def test_dataset_split_column_is_respected() -> None:
    col = {f"p{i:02d}": ("test" if i < 3 else "train") for i in range(10)}
    col["p09"] = "unlabeled"
    data = make_slices(10, 3, splits=col, unlabeled_patients=("p09",))
    for seed in range(10):
        s = split_target(data, fractions=(0.5, 0.25, 0.25), seed=seed)
        assert s.test == ("p00", "p01", "p02")
        assert "p09" in s.unlabeled
        # The dataset brings its own unlabeled patient: every labeled train patient is support.
        assert s.unlabeled == ("p09",)
        assert len(s.support) == 6


def test_patient_with_mixed_split_rows_is_not_test() -> None:
    data = make_slices(5, 2)
    col = data.splits.copy()
    col[data.rows_of(["p00"])] = "test"
    col[data.rows_of(["p01"])[0]] = "test"
    data = SliceSet(**{**data.__dict__, "splits": col})
    s = split_target(data, seed=0)
    assert s.test == ("p00",)


def test_empty_test_set_raises_clear_error() -> None:
    no_labels = make_slices(3, 2, unlabeled_patients=("p00", "p01", "p02"))
    with pytest.raises(ValueError, match=r"'toy': empty test set \(3 patients, 0 with labeled slices"):
        split_target(no_labels, seed=0)
    one_labeled = make_slices(3, 2, unlabeled_patients=("p01", "p02"))
    with pytest.raises(ValueError, match=r"'toy': empty support pool \(3 patients, 1 with labeled slices"):
        split_target(one_labeled, seed=0)


def test_bad_fractions_rejected() -> None:
    with pytest.raises(ValueError, match="sum"):
        split_target(make_slices(5, 2), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        split_target(make_slices(5, 2), fractions=(0.0, 0.5, 0.5))


def test_save_load_verify_round_trip(tmp_path) -> None:
    data = make_slices(8, 2)
    s = split_target(data, seed=5)
    path = save_split(s, tmp_path / "split.json")
    back = load_split(path)
    assert back == s
    verify_split(back, data)
    assert back.pools(data)["test"].patient_ids() == list(s.test)


def test_verify_fails_on_mismatched_fingerprint_and_unknown_patients(tmp_path) -> None:
    data = make_slices(8, 2)
    s = load_split(save_split(split_target(data, seed=0), tmp_path / "split.json"))
    other = make_slices(8, 2, seed=1)
    with pytest.raises(ValueError, match=r"fingerprint.*delete the split file or use another output directory"):
        verify_split(s, other)
    with pytest.raises(ValueError, match="fingerprint"):
        s.pools(other)
    fewer = SliceSet(**{**data.subset(data.rows_of(data.patient_ids()[:-1])).__dict__})
    with pytest.raises(ValueError, match="not in the data"):
        verify_split(s, fewer)


def test_source_split_disjoint_and_deterministic() -> None:
    data = make_slices(10, 2)
    train, val = split_source(data, val_fraction=0.2, seed=0)
    assert not set(train) & set(val)
    assert len(val) == 2 and len(train) == 8
    assert (train, val) == split_source(data, val_fraction=0.2, seed=0)
    assert split_source(data, val_fraction=0.0) == (tuple(data.patient_ids()), ())


def test_own_unlabeled_rows_keep_every_labeled_training_row_in_support() -> None:
    """A dataset with its own unlabeled patients: none of the labeled ones is moved to the
    unlabeled pool, so ``all`` shots = every labeled training slice."""
    data = make_slices(12, 3, unlabeled_patients=("p10", "p11"))
    for seed in range(10):
        s = split_target(data, fractions=(0.4, 0.2, 0.4), seed=seed)
        assert s.unlabeled == ("p10", "p11")
        assert len(s.support) + len(s.test) == 10 and s.fractions[1] == 0.0
        pools = s.pools(data)
        assert not pools["unlabeled"].labeled.any() and len(pools["unlabeled"]) == 6
        assert len(pools["support"]) + len(pools["test"]) == int(data.labeled.sum())
    # Without a dataset of its own unlabeled rows the fractions still carve an unlabeled pool.
    assert split_target(make_slices(12, 3), seed=0).unlabeled


def test_own_unlabeled_rows_with_a_dataset_test_split_put_all_train_rows_in_support() -> None:
    col = {f"p{i:02d}": ("test" if i < 2 else "train") for i in range(8)}
    data = make_slices(8, 2, splits=col, unlabeled_patients=("p07",))
    s = split_target(data, seed=0)
    assert s.test == ("p00", "p01") and s.unlabeled == ("p07",)
    assert s.support == tuple(f"p{i:02d}" for i in range(2, 7))


def _all_positive(n_patients: int, per_patient: int = 2, **kw) -> SliceSet:
    data = make_slices(n_patients, per_patient, positive=0.5, **kw)
    masks = data.masks.copy()
    masks[[data.rows_of([p])[0] for p in data.patient_ids()], 0, 0] = 1
    return SliceSet(**{**data.__dict__, "masks": masks * data.labeled[:, None, None]})


def test_folds_partition_the_labeled_patients_and_are_deterministic() -> None:
    data = _all_positive(23, unlabeled_patients=("p21", "p22"))
    splits = [split_target(data, seed=4, folds=5, fold=i) for i in range(5)]
    folds = splits[0].folds
    assert all(s.folds == folds for s in splits)  # the assignment depends on the seed, not the fold
    tests = [set(s.test) for s in splits]
    labeled = {f"p{i:02d}" for i in range(21)}
    assert set().union(*tests) == labeled and sum(map(len, tests)) == 21  # disjoint, covering
    assert sorted(map(len, tests)) == [4, 4, 4, 4, 5]
    for i, s in enumerate(splits):
        assert s.fold == i and s.test == tuple(sorted(folds[i]))
        assert set(s.support) == labeled - set(s.test) and s.unlabeled == ("p21", "p22")
        check_disjoint(s.as_dict())
        pools = s.pools(data)
        assert not set(pools["support"].patients) & set(pools["test"].patients)  # patient-free
    assert split_target(data, seed=4, folds=5, fold=2) == splits[2]
    assert split_target(data, seed=5, folds=5, fold=0).folds != folds


def test_folds_keep_slices_of_one_patient_together() -> None:
    data = _all_positive(10, per_patient=4)
    for i in range(3):
        pools = split_target(data, seed=0, folds=3, fold=i).pools(data)
        for p in pools["test"].patient_ids():
            assert (pools["test"].patients == p).sum() == 4
            assert p not in set(pools["support"].patients)


def test_folds_round_trip_through_the_split_file(tmp_path) -> None:
    data = _all_positive(9)
    s = split_target(data, seed=1, folds=3, fold=1)
    back = load_split(save_split(s, tmp_path / "split.json"))
    assert back == s and back.folds == s.folds and back.fold == 1
    assert load_split(save_split(split_target(data, seed=1), tmp_path / "plain.json")).folds == ()


@pytest.mark.parametrize(
    "folds,fold,match",
    [
        (1, 0, "0 \\(off\\) or >= 2"),
        (5, 5, "must be in 0..4"),
        (0, 2, "needs data.split.folds >= 2"),
        (12, 0, "needs at least 12 patients with labeled slices"),
    ],
)
def test_fold_errors_are_clear(folds, fold, match) -> None:
    with pytest.raises(ValueError, match=match):
        split_target(_all_positive(9), seed=0, folds=folds, fold=fold)


def test_a_dataset_with_its_own_test_split_uses_it_instead_of_folds() -> None:
    """configs/real.toml sets folds for the semiseg dev set; a dataset with a test split keeps its own."""
    col = {f"p{i:02d}": ("test" if i < 2 else "train") for i in range(8)}
    data = _all_positive(8, splits=col)
    assert has_own_test_split(data) and not has_own_test_split(_all_positive(8))
    s = split_target(data, seed=0, folds=3, fold=0)
    assert s == split_target(data, seed=0) and set(s.test) == {"p00", "p01"} and s.folds == ()
    with pytest.raises(ValueError, match="has its own test split.*data.split.fold = 2 has no meaning"):
        split_target(data, seed=0, folds=3, fold=2)
