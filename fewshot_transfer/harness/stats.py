"""Confidence intervals, paired tests and ranking with ties for the leaderboard.

Episodes share support sets across learners (same seed, same shots), so learners are
compared **paired** by episode; slices of one patient are correlated, so intervals are
taken over episodes (one value per seed), never over slices. NaN entries are dropped
(pairwise, for paired statistics) rather than propagated, because one undefined episode
should not blank a whole row.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) with a Student-t interval; one value gives (v, nan, nan), none all-NaN."""
    _check_confidence(confidence)
    v = _clean(values)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if v.size == 1:
        return (mean, math.nan, math.nan)
    sem = float(v.std(ddof=1) / math.sqrt(v.size))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=v.size - 1)) * sem
    return (mean, mean - half, mean + half)


def _paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep] - y[keep]


def _ttest_p(d: np.ndarray) -> float:
    """Two-sided paired t-test p on differences ``d``; exact answers when they do not vary."""
    if d.size < 2:
        return math.nan
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_rel(d, np.zeros_like(d)).pvalue)


def paired_diff(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """Paired difference a − b: mean, t-interval, n, t-test p and Wilcoxon p.

    Pairs with a NaN on either side are dropped. ``p_wilcoxon`` needs n ≥ 5 and a
    non-zero difference, else NaN. When every difference is identical the t-test is
    degenerate; p is then 1 for a zero and 0 for a non-zero constant difference.
    """
    d = _paired(a, b)
    mean, lo, hi = mean_ci(d, confidence)
    p_w = math.nan
    if d.size >= 5 and np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p_w = float(stats.wilcoxon(d).pvalue)
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(d.size), "p_value": _ttest_p(d), "p_wilcoxon": p_w}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN
    and does not count as a test.

    Controls the family-wise error rate over the whole family of comparisons without
    assuming independence, so "significant" on a leaderboard with many learners means the
    same as with two.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def rank_with_ties(
    scores: dict[str, Sequence[float]], *, alpha: float = 0.05, higher_is_better: bool = True
) -> dict[str, int]:
    """Leaderboard ranks where statistically indistinguishable learners share a rank.

    Meta-Dataset style: rank = 1 + the number of learners whose mean is better *and*
    whose paired difference to this learner is significant: two-sided paired t-test on the
    episodes both have, Holm-corrected over all pairs of learners, adjusted p < ``alpha``.
    So the best learner and every learner it cannot be told apart from get rank 1, and
    adding learners does not manufacture significant differences. Scores must be paired by
    episode (same length, same order). A learner with no finite score ranks below every
    learner that has one.
    """
    if not scores:
        return {}
    lengths = {name: len(v) for name, v in scores.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"scores must be paired by episode (equal lengths), got {lengths}")
    sign = 1.0 if higher_is_better else -1.0
    means = {name: sign * mean_ci(v)[0] for name, v in scores.items()}
    names = sorted(scores, key=lambda n: (-np.nan_to_num(means[n], nan=-np.inf), n))
    finite = [n for n in names if not math.isnan(means[n])]
    pairs = [(a, b) for i, a in enumerate(finite) for b in finite[i + 1 :] if means[a] > means[b]]
    adjusted = holm([_ttest_p(_paired(scores[a], scores[b])) for a, b in pairs])
    beaten_by: dict[str, int] = {n: 0 for n in names}
    for (_, worse), p in zip(pairs, adjusted):
        if p < alpha:
            beaten_by[worse] += 1
    return {n: (1 + beaten_by[n]) if not math.isnan(means[n]) else 1 + len(finite) for n in names}


def parse_comparison(text: str) -> tuple[str, str, int]:
    """A paired comparison ``"LEARNER - REFERENCE @ K"`` -> (learner, reference, k).

    The form the positive-control presets and ``configs/claims.toml`` state claims in."""
    m = re.fullmatch(r"\s*([\w-]+)\s+-\s+([\w-]+)\s*@\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"comparison {text!r}: expected 'LEARNER - REFERENCE @ K'")
    return m.group(1), m.group(2), int(m.group(3))
