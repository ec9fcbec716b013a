"""Confidence intervals, paired tests and ranking with ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fewshot_transfer.harness.stats import mean_ci, paired_diff, rank_with_ties


def test_mean_ci_matches_scipy_t_interval() -> None:
    v = np.random.default_rng(0).normal(0.6, 0.1, 12)
    mean, lo, hi = mean_ci(v, 0.95)
    ref = stats.t.interval(0.95, df=11, loc=v.mean(), scale=stats.sem(v))
    assert lo < mean < hi
    assert mean == pytest.approx(v.mean())
    assert (lo, hi) == pytest.approx(ref)


def test_mean_ci_edge_cases() -> None:
    assert mean_ci([0.7])[0] == 0.7 and all(math.isnan(x) for x in mean_ci([0.7])[1:])
    assert all(math.isnan(x) for x in mean_ci([]))
    assert mean_ci([0.5, float("nan"), 0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1, 2], confidence=95)


def test_paired_detects_small_consistent_shift_that_unpaired_misses() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.9, 10)  # large between-episode spread
    a = base + 0.02 + rng.normal(0, 0.003, 10)
    r = paired_diff(a, base)
    assert r["n"] == 10 and r["lo"] < r["mean"] < r["hi"] and r["lo"] > 0
    assert r["p_value"] < 1e-6 and r["p_wilcoxon"] < 0.01
    assert stats.ttest_ind(a, base).pvalue > 0.5


def test_paired_diff_nans_and_degenerate() -> None:
    r = paired_diff([1.0, float("nan"), 3.0, 4.0], [0.5, 2.0, float("nan"), 3.5])
    assert r["n"] == 2 and r["mean"] == pytest.approx(0.5) and r["p_value"] == 0.0
    assert math.isnan(r["p_wilcoxon"])
    z = paired_diff([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    assert z["p_value"] == 1.0 and math.isnan(z["p_wilcoxon"])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_diff([1, 2], [1])


def test_rank_with_ties() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.7, 20)
    scores = {
        "best": base + 0.2 + rng.normal(0, 0.01, 20),
        "twin": base + 0.2 + rng.normal(0, 0.01, 20),
        "mid": base + 0.1 + rng.normal(0, 0.01, 20),
        "worst": base.copy(),
        "broken": np.full(20, np.nan),
    }
    ranks = rank_with_ties({k: list(v) for k, v in scores.items()})
    assert ranks["best"] == ranks["twin"] == 1
    assert ranks["mid"] == 3 and ranks["worst"] == 4 and ranks["broken"] == 5
    lower = rank_with_ties({"a": [1.0, 2.0, 3.0], "b": [2.0, 3.0, 4.0]}, higher_is_better=False)
    assert lower == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="paired"):
        rank_with_ties({"a": [1.0], "b": [1.0, 2.0]})
