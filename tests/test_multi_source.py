"""A domain made of several datasets (``--source A,B``): union, origin per slice, patient ids kept apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fewshot_transfer.cli import main
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.info import SplitInfo, summarize
from fewshot_transfer.data.loader import combine_domains, load_domain
from fewshot_transfer.data.splits import check_disjoint, split_source, split_target

from conftest import TINY
from fixtures_datasets import SIZE, build_nifti_dataset


@pytest.fixture
def two_sets(tmp_path):
    """Two datasets whose patients are both called p00..p03 (as two real sets numbering their cases would)."""
    a = build_nifti_dataset(tmp_path / "alpha", n_patients=4, splits=("train",))
    b = build_nifti_dataset(tmp_path / "beta", n_patients=4, splits=("train", "test"))
    assert set(a.patients) == set(b.patients)
    return tmp_path / "alpha", tmp_path / "beta"


def test_union_prefixes_patients_and_keeps_origin(two_sets, tmp_path):
    a, b = two_sets
    alone = load_domain(str(a), size=SIZE, cache_dir=tmp_path / "cache")
    union = load_domain(f"{a},{b}", size=SIZE, cache_dir=tmp_path / "cache")
    assert len(union) == 2 * len(alone) and union.name == "alpha+beta"
    assert union.patient_ids() == [f"{n}:p{i:02d}" for n in ("alpha", "beta") for i in range(4)]
    assert union.dataset.tolist() == ["alpha"] * len(alone) + ["beta"] * len(alone)
    np.testing.assert_array_equal(union.images[: len(alone)], alone.images)
    np.testing.assert_array_equal(union.masks[: len(alone)], alone.masks)
    assert [c["name"] for c in union.meta["combined"]] == ["alpha", "beta"]
    picked = union.subset(union.rows_of(["beta:p01"]))
    assert set(picked.dataset.tolist()) == {"beta"} and len(picked) == len(alone) // 4


def test_patient_disjoint_splits_across_datasets(two_sets, tmp_path):
    union = load_domain(",".join(map(str, two_sets)), size=SIZE, cache_dir=tmp_path / "cache")
    train, val = split_source(union, val_fraction=0.25, seed=0)
    assert len(train) + len(val) == 8 and not set(train) & set(val)
    for group in (train, val):
        rows = union.rows_of(group)
        # every row of a patient is in the group's rows: no slice of a same-numbered patient of the other set leaks in
        assert sorted(set(union.patients[rows].tolist())) == sorted(group)
    split = split_target(union, fractions=(0.5, 0.0, 0.5), seed=0)
    check_disjoint({"support": split.support, "test": split.test})
    assert set(split.support) | set(split.test) <= set(union.patient_ids())


def test_same_dataset_twice_is_two_groups(two_sets, tmp_path):
    a, _ = two_sets
    union = load_domain(f"{a},{a}", size=SIZE, cache_dir=tmp_path / "cache")
    assert set(union.dataset.tolist()) == {"alpha", "alpha#2"} and len(union.patient_ids()) == 8


def test_folder_and_phantom_combine_and_sizes_must_match(two_sets, tmp_path):
    a, _ = two_sets
    union = load_domain(f"{a},phantom:cap", size=SIZE, cache_dir=tmp_path / "cache", phantom={"n_patients": 3})
    assert set(union.dataset.tolist()) == {"alpha", "phantom-cap"}
    bigger = load_domain(str(a), size=2 * SIZE, cache_dir=tmp_path / "cache")
    with pytest.raises(DatasetError, match="slice sizes differ"):
        combine_domains([union, bigger])


def test_info_shows_datasets_of_origin(two_sets, tmp_path, capsys):
    a, b = two_sets
    union = load_domain(f"{a},{b}", size=SIZE, cache_dir=tmp_path / "cache")
    info = summarize(union)
    assert list(info.datasets) == ["alpha", "beta"]
    assert info.datasets["alpha"] == SplitInfo(patients=4, slices=16, labeled=16, positive=12)
    assert main(["data", "info", f"{a},{b}", "--size", str(SIZE), "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "datasets of origin" in out and "beta" in out
    assert main(["data", "info", str(a), "--size", str(SIZE), "--json", "--cache-dir", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out)["datasets"] == {}


@pytest.mark.integration
def test_run_with_a_two_dataset_source(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--source",
            "phantom:cap,phantom:cap?seed=7",
            "--learners",
            "source-only,finetune",
            "--shots",
            "0,1",
            "--seeds",
            "1",
            "--jobs",
            "1",
            "--no-progress",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    assert "phantom-cap+phantom-cap#2" in (out / "leaderboard.md").read_text()
