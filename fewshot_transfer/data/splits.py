"""Patient-disjoint pools for the benchmark protocol, the leakage guard, and the split file.

The target domain is split **by patient** into a support pool (shots are drawn from it),
an unlabeled pool (domain adaptation only) and a fixed test set; the source domain into
train / validation. Slices of one patient are strongly correlated, so a patient in two
pools would leak test information into training: :func:`check_disjoint` makes that a
hard error wherever pools are built or used.

Assignment rules (``split_target``):

* Patients with no labeled slice can be neither shots nor test cases: they always go to
  the unlabeled pool.
* When the dataset has its own split column and some labeled patient has *all* rows
  marked ``"test"``, those patients are the test set and the support / unlabeled pools are
  carved from the remaining labeled patients with the support / unlabeled fractions
  renormalized. Otherwise the test set is carved by ``fractions`` too.
* Light stratification by lesion burden: labeled patients are ranked by mean lesion
  fraction (descending; a seeded permutation breaks ties) and dealt in that order to the
  pools, each patient going to the pool most behind its quota (plus seeded uniform
  jitter, so the seed changes the split). Every pool therefore sees heavy and light
  patients. Afterwards, if the support pool or the test set holds no lesion-positive
  patient while another pool can spare one, the two are swapped, so shots and test both
  contain lesions whenever the data allows.
* Every pool with a positive fraction gets at least one patient where there are enough;
  an empty test set or support pool is an error, never a silent empty benchmark.
* **A dataset's own unlabeled rows.** When the dataset brings patients with no labeled
  slice (COVID-SemiSeg's 400 ``Pseudo-label/Imgs`` slices, MSD's ``imagesTs``), those
  *are* the unlabeled pool: every labeled training patient goes to the support pool and
  none is moved into the unlabeled pool (the unlabeled fraction is ignored; support and
  test fractions are renormalized). ``--shots all`` then means every labeled training
  slice.
* **Folds** (``folds = K >= 2``, ``fold = i``): for a dataset without its own test split,
  the labeled patients are dealt into K folds (ranked by lesion burden, each block of K
  consecutive patients spread over the K folds in a seeded order, so folds differ by at
  most one patient and each sees heavy and light patients); fold i is the test set, the
  other folds are the support pool, patients without labels the unlabeled pool. The
  assignment depends on the seed only (not on i), so the K folds of one seed partition
  the labeled patients; it is written to the split file. Patients are the dataset's
  grouping unit: slice-level where patient ids are unknown (each slice its own group),
  patient-level where known.

In ``pools()``, support and test keep only their patients' labeled rows (unlabeled rows
of those patients are dropped rather than moved, which would break patient-disjointness),
and the unlabeled pool has its masks zeroed and ``labeled`` cleared, so no learner can
read target labels through it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fewshot_transfer.data.slices import SliceSet

log = logging.getLogger(__name__)

SPLIT_FORMAT = "ftbench-split/1"
POOLS = ("support", "unlabeled", "test")


class LeakageError(RuntimeError):
    """A patient appears in two pools that must be disjoint."""


@dataclass(frozen=True)
class TargetSplit:
    """The target-domain split: patient ids per pool, and what produced it."""

    support: tuple[str, ...]
    unlabeled: tuple[str, ...]
    test: tuple[str, ...]
    seed: int
    fractions: tuple[float, float, float]
    dataset_fingerprint: str
    dataset: str = ""
    #: The K-fold assignment (patients per fold) when the split is a fold; empty otherwise.
    folds: tuple[tuple[str, ...], ...] = ()
    #: Which fold is the test set (None when the split is not a fold).
    fold: int | None = None

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        """Pool name -> patient ids."""
        return {"support": self.support, "unlabeled": self.unlabeled, "test": self.test}

    def pools(self, data: SliceSet) -> dict[str, SliceSet]:
        """The ``support`` / ``unlabeled`` / ``test`` subsets of ``data``.

        Verifies the split belongs to ``data`` and re-runs the leakage guard on the rows
        actually returned, so a split edited by hand cannot leak either.
        """
        verify_split(self, data)
        check_disjoint(self.as_dict())
        out: dict[str, SliceSet] = {}
        for pool, patients in self.as_dict().items():
            rows = data.rows_of(list(patients))
            if pool != "unlabeled":
                rows = rows[data.labeled[rows]]
                out[pool] = data.subset(rows)
            else:
                sub = data.subset(rows)
                out[pool] = replace(sub, masks=np.zeros_like(sub.masks), labeled=np.zeros(len(sub), dtype=bool))
        check_disjoint({k: v.patients.tolist() for k, v in out.items()})
        return out

    def to_json(self) -> dict:
        out = {
            "format": SPLIT_FORMAT,
            "dataset": self.dataset,
            "dataset_fingerprint": self.dataset_fingerprint,
            "seed": int(self.seed),
            "fractions": [float(f) for f in self.fractions],
            "support": list(self.support),
            "unlabeled": list(self.unlabeled),
            "test": list(self.test),
        }
        if self.folds:
            out["fold"] = int(self.fold or 0)
            out["folds"] = [list(f) for f in self.folds]
        return out

    @classmethod
    def from_json(cls, d: dict) -> TargetSplit:
        fmt = d.get("format")
        if fmt != SPLIT_FORMAT:
            raise ValueError(f"split file format {fmt!r} is not {SPLIT_FORMAT!r}; regenerate the split")
        split = cls(
            support=tuple(d["support"]),
            unlabeled=tuple(d["unlabeled"]),
            test=tuple(d["test"]),
            seed=int(d["seed"]),
            fractions=tuple(float(f) for f in d["fractions"]),  # type: ignore[arg-type]
            dataset_fingerprint=str(d["dataset_fingerprint"]),
            dataset=str(d.get("dataset", "")),
            folds=tuple(tuple(f) for f in d.get("folds", ())),
            fold=int(d["fold"]) if d.get("folds") else None,
        )
        check_disjoint(split.as_dict())
        if split.folds:
            check_disjoint({f"fold {i}": f for i, f in enumerate(split.folds)})
            if (
                split.fold is None
                or not 0 <= split.fold < len(split.folds)
                or split.test != tuple(sorted(split.folds[split.fold]))
            ):
                raise ValueError(f"split file: fold {split.fold} is not the test set of its {len(split.folds)} folds")
        return split


def check_disjoint(pools: dict[str, Iterable[str]]) -> None:
    """Raise :class:`LeakageError` if any patient belongs to two pools.

    The message names every offending patient and both pools, because a silent overlap
    would inflate every number downstream.
    """
    seen: dict[str, str] = {}
    clashes: list[str] = []
    for pool, patients in pools.items():
        for p in sorted(set(map(str, patients))):
            if p in seen:
                clashes.append(f"patient {p!r} is in both {seen[p]!r} and {pool!r}")
            else:
                seen[p] = pool
    if clashes:
        shown = "; ".join(clashes[:10]) + (f"; ... ({len(clashes)} in all)" if len(clashes) > 10 else "")
        raise LeakageError(f"patient leakage between pools: {shown}")


def _patient_table(data: SliceSet) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Sorted patients, whether each has a labeled slice, its lesion burden, all-'test' flag."""
    patients, inverse = np.unique(data.patients.astype(str), return_inverse=True)
    n = len(patients)
    frac = data.lesion_fraction()
    lab = data.labeled.astype(bool)
    n_lab = np.bincount(inverse, weights=lab, minlength=n)
    burden = np.bincount(inverse, weights=np.where(lab, frac, 0.0), minlength=n) / np.maximum(n_lab, 1)
    is_test_row = np.char.lower(np.char.strip(data.splits.astype(str))) == "test"
    n_rows = np.bincount(inverse, minlength=n)
    all_test = np.bincount(inverse, weights=is_test_row, minlength=n) == n_rows
    return patients.tolist(), n_lab > 0, burden, all_test


def has_own_test_split(data: SliceSet) -> bool:
    """Whether the dataset marks some labeled patients ``test`` itself (then no folds are carved)."""
    _, has_label, _, all_test = _patient_table(data)
    return bool(np.any(has_label & all_test))


def _quotas(n: int, fractions: np.ndarray, priority: list[int]) -> np.ndarray:
    """Largest-remainder counts for ``n`` items, at least one per positive fraction where possible.

    When ``n`` is too small for every pool, pools are served in ``priority`` order.
    """
    raw = fractions * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in priority:
        if fractions[i] > 0 and counts[i] == 0:
            donors = [j for j in range(len(counts)) if counts[j] > 1 or (counts[j] == 1 and fractions[j] == 0)]
            if not donors:
                served = priority[: priority.index(i) + 1]
                donors = [j for j in range(len(counts)) if j not in served and counts[j] >= 1]
            if donors:
                donor = max(donors, key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _deal(
    patients: list[str], burden: np.ndarray, fractions: np.ndarray, priority: list[int], rng: np.random.Generator
) -> list[list[str]]:
    """Deal patients (ranked by burden) to pools by quota; see the module docstring."""
    n = len(patients)
    counts = _quotas(n, fractions, priority)
    tiebreak = rng.permutation(n)
    order = np.lexsort((tiebreak, -burden))
    out: list[list[str]] = [[] for _ in fractions]
    assigned = np.zeros(len(fractions), dtype=int)
    for step, i in enumerate(order, start=1):
        due = counts * step / max(n, 1) - assigned + rng.uniform(0.0, 1.0, len(fractions))
        due[assigned >= counts] = -np.inf
        pool = int(np.argmax(due))
        out[pool].append(patients[i])
        assigned[pool] += 1
    return out


def _ensure_positive(
    pools: list[list[str]], need: list[int], burden_of: dict[str, float], frozen: tuple[int, ...] = ()
) -> None:
    """Swap so each pool in ``need`` holds a lesion-positive patient, when another can spare one.

    Pools in ``frozen`` (a test set fixed by the dataset) never give or take patients.
    """
    for target in need:
        if not pools[target] or any(burden_of[p] > 0 for p in pools[target]):
            continue
        donors = []
        for j, pool in enumerate(pools):
            positives = [p for p in pool if burden_of[p] > 0]
            spare = len(positives) - (1 if j in need else 0)
            if j != target and j not in frozen and spare > 0:
                donors.append((spare, j))
        if not donors:
            continue
        _, j = max(donors)
        give = max((p for p in pools[j] if burden_of[p] > 0), key=lambda p: burden_of[p])
        take = min(pools[target], key=lambda p: burden_of[p])
        pools[j].remove(give)
        pools[target].remove(take)
        pools[j].append(take)
        pools[target].append(give)


def _check_fractions(fractions: tuple[float, float, float]) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(~np.isfinite(f)) or np.any(f < 0) or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers (support, unlabeled, test) summing to 1, got {fractions}"
        )
    if f[0] <= 0 or f[2] <= 0:
        raise ValueError(f"support and test fractions must be positive, got {fractions}")
    return f


def check_folds(folds: int, fold: int) -> None:
    """Validate ``data.split.folds`` / ``data.split.fold`` (0 folds = no fold protocol)."""
    for name, value in (("data.split.folds", folds), ("data.split.fold", fold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if folds == 0:
        if fold != 0:
            raise ValueError(f"data.split.fold = {fold} needs data.split.folds >= 2 (folds = 0 means no fold protocol)")
        return
    if folds < 2:
        raise ValueError(f"data.split.folds must be 0 (off) or >= 2, got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"data.split.fold must be in 0..{folds - 1} for data.split.folds = {folds}, got {fold}")


def _fold_assignment(patients: list[str], burden: np.ndarray, folds: int, rng: np.random.Generator) -> list[list[str]]:
    """Patients ranked by burden (seeded tie-break), each block of ``folds`` spread over the folds
    in a seeded order: fold sizes differ by at most one, every fold sees every burden band."""
    order = np.lexsort((rng.permutation(len(patients)), -burden))
    out: list[list[str]] = [[] for _ in range(folds)]
    for start in range(0, len(order), folds):
        block = order[start : start + folds]
        for i, f in zip(block, rng.permutation(folds)[: len(block)]):
            out[int(f)].append(patients[i])
    return [sorted(f) for f in out]


def split_target(
    data: SliceSet,
    *,
    fractions: tuple[float, float, float] = (0.4, 0.2, 0.4),
    seed: int = 0,
    folds: int = 0,
    fold: int = 0,
) -> TargetSplit:
    """Split the target dataset by patient into support / unlabeled / test (rules in module docstring).

    ``folds >= 2`` selects the fold protocol (test = fold ``fold``); ``fractions`` are then unused.
    """
    f = _check_fractions(fractions)
    check_folds(folds, fold)
    rng = np.random.default_rng(seed)
    patients, has_label, burden, all_test = _patient_table(data)
    burden_of = dict(zip(patients, burden.tolist()))
    labeled = [p for p, h in zip(patients, has_label) if h]
    unlabeled_only = [p for p, h in zip(patients, has_label) if not h]
    fixed_test = [p for p, h, t in zip(patients, has_label, all_test) if h and t]
    counts = (
        f"{len(patients)} patients, {len(labeled)} with labeled slices, "
        f"{len(fixed_test)} labeled patients marked 'test' by the dataset"
    )
    # The dataset's own unlabeled patients are the unlabeled pool: no labeled patient is moved there.
    if unlabeled_only and f[1] > 0:
        log.info(
            "dataset %r brings %d patient(s) without labels: they are the unlabeled pool, and every labeled "
            "training patient goes to the support pool (unlabeled fraction %g not used)",
            data.name,
            len(unlabeled_only),
            f[1],
        )
        f = np.array([f[0], 0.0, f[2]]) / (f[0] + f[2])
    assignment: list[list[str]] = []
    if folds and fixed_test:
        # A fold protocol is for a target without a test split; a dataset's own split wins
        # (configs/real.toml sets folds for the semiseg dev set and serves both kinds).
        if fold != 0:
            raise ValueError(
                f"dataset {data.name!r} has its own test split ({counts}), which replaces the fold protocol; "
                f"data.split.fold = {fold} has no meaning there: use fold 0 (or data.split.folds = 0)"
            )
        log.info("dataset %r has its own test split (%s): it is used instead of %d folds", data.name, counts, folds)
        folds = 0
    if folds:
        if len(labeled) < folds:
            raise ValueError(
                f"dataset {data.name!r}: data.split.folds = {folds} needs at least {folds} patients with labeled "
                f"slices ({counts}); use fewer folds"
            )
        lab_burden = np.array([burden_of[p] for p in labeled])
        assignment = _fold_assignment(labeled, lab_burden, folds, rng)
        if not any(burden_of[p] > 0 for p in assignment[fold]):
            n_pos = int(np.count_nonzero(lab_burden > 0))
            raise ValueError(
                f"dataset {data.name!r}: fold {fold} of {folds} holds no lesion-positive patient ({n_pos} of "
                f"{len(labeled)} labeled patients have lesions), so its Dice is undefined; use fewer folds"
            )
        test = list(assignment[fold])
        pools = [[p for i, a in enumerate(assignment) if i != fold for p in a], [], test]
        f = np.array([1.0 - 1.0 / folds, 0.0, 1.0 / folds])
    elif fixed_test:
        # Unlabeled-only patients already fill the unlabeled pool; it then needs no labeled minimum.
        min_unlabeled = [] if unlabeled_only else [1]
        rest = [p for p in labeled if p not in set(fixed_test)]
        rest_burden = np.array([burden_of[p] for p in rest])
        f2 = f[:2] / f[:2].sum()
        support, unl = _deal(rest, rest_burden, f2, [0, *min_unlabeled], rng) if rest else ([], [])
        pools = [support, unl, list(fixed_test)]
        _ensure_positive(pools, [0], burden_of, frozen=(2,))
    else:
        min_unlabeled = [] if unlabeled_only else [1]
        if np.any(np.char.lower(data.splits.astype(str)) == "test"):
            log.info(
                "dataset %r: no labeled patient has all rows marked 'test'; carving the test set by fractions",
                data.name,
            )
        lab_burden = np.array([burden_of[p] for p in labeled])
        pools = _deal(labeled, lab_burden, f, [2, 0, *min_unlabeled], rng) if labeled else [[], [], []]
        _ensure_positive(pools, [2, 0], burden_of)

    support, unl, test = (sorted(p) for p in pools)
    unl = sorted(set(unl) | set(unlabeled_only))
    if not test:
        raise ValueError(
            f"dataset {data.name!r}: empty test set ({counts}); the target needs at least two patients with "
            "labeled slices (one for shots, one for testing)"
        )
    if not support:
        raise ValueError(
            f"dataset {data.name!r}: empty support pool ({counts}); no labeled patient is left for the k shots"
        )
    split = TargetSplit(
        support=tuple(support),
        unlabeled=tuple(unl),
        test=tuple(test),
        seed=int(seed),
        fractions=tuple(float(x) for x in f),  # type: ignore[arg-type]
        dataset_fingerprint=data.fingerprint,
        dataset=data.name,
        folds=tuple(tuple(a) for a in assignment),
        fold=int(fold) if folds else None,
    )
    check_disjoint(split.as_dict())
    return split


def split_source(
    data: SliceSet, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split the source dataset by patient into (train, validation) patient ids.

    Validation is drawn from labeled patients only, with the same burden-ranked deal as
    the target; patients without labels stay in train. The dataset's own split column is
    ignored: on the source side all of it is training material.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    patients, has_label, burden, _ = _patient_table(data)
    labeled = [p for p, h in zip(patients, has_label) if h]
    if not labeled:
        raise ValueError(f"source dataset {data.name!r} has no labeled slices ({len(patients)} patients)")
    lab_burden = burden[has_label]
    f = np.array([1.0 - val_fraction, val_fraction])
    train, val = _deal(labeled, lab_burden, f, [0, 1], rng) if val_fraction > 0 else (labeled, [])
    train = sorted(set(train) | {p for p, h in zip(patients, has_label) if not h})
    check_disjoint({"source-train": train, "source-val": val})
    return tuple(train), tuple(sorted(val))


def verify_split(split: TargetSplit, data: SliceSet) -> None:
    """Raise ValueError when ``split`` was not made for ``data`` (fingerprint or patients differ)."""
    hint = "delete the split file or use another output directory to make a fresh split"
    problems = []
    if split.dataset_fingerprint != data.fingerprint:
        problems.append(
            f"dataset fingerprint {data.fingerprint!r} does not match the split's {split.dataset_fingerprint!r}"
        )
    in_split = set(split.support) | set(split.unlabeled) | set(split.test)
    in_data = set(data.patient_ids())
    unknown = sorted(in_split - in_data)
    missing = sorted(in_data - in_split)
    if unknown:
        problems.append(f"{len(unknown)} split patient(s) not in the data, e.g. {unknown[:5]}")
    if missing:
        problems.append(f"{len(missing)} data patient(s) not in the split, e.g. {missing[:5]}")
    if problems:
        name = split.dataset or data.name
        raise ValueError(f"split for dataset {name!r} does not match the data: {'; '.join(problems)}; {hint}")


def save_split(split: TargetSplit, path: str | Path) -> Path:
    """Write ``split`` as JSON (nnU-Net's ``splits_final.json`` idea: every run names its split)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(split.to_json(), indent=2) + "\n")
    tmp.replace(path)
    return path


def load_split(path: str | Path) -> TargetSplit:
    """Read a split written by :func:`save_split`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"split file {path} is not valid JSON ({err}); delete it to make a fresh split") from err
    return TargetSplit.from_json(d)
