"""One benchmark instance: data loaded, pools split by patient, shots resolved.

Everything a cell needs that does not depend on the learner lives here, built once per
run: the source train/val split, the target support / unlabeled / test pools (saved to
``split.json`` and verified on reuse), the k-shot support sets keyed by (seed, k), and
the model cache that lets every learner and every k share one source pretraining.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from fewshot_transfer.config import config_hash
from fewshot_transfer.data.cache import cache_root
from fewshot_transfer.data.loader import label_origin, load_run_domain, native_slices
from fewshot_transfer.data.samplers import labeled_fraction, resolve_shots, support_indices, support_pool_size
from fewshot_transfer.data.slices import SliceSet
from fewshot_transfer.data.splits import (
    TargetSplit,
    has_own_test_split,
    load_split,
    save_split,
    split_source,
    split_target,
    verify_split,
)
from fewshot_transfer.harness.planning import add_cell, run_plan
from fewshot_transfer.harness.store import training_seed
from fewshot_transfer.plan import CellPlan, RunPlan
from fewshot_transfer.training import LearnerContext, ModelCache, ProgressCallback, pretrained_source_model
from fewshot_transfer.training.params import Params

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, with a clear error when CUDA is asked for but absent."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} requested but torch.cuda.is_available() is False; use --device cpu")
    return torch.device(name)


@dataclass
class Benchmark:
    plan: RunPlan
    out_dir: Path
    source: SliceSet
    target: SliceSet
    source_train: SliceSet
    source_val: SliceSet
    split: TargetSplit
    support_pool: SliceSet
    unlabeled_pool: SliceSet
    test_set: SliceSet
    shots: list[tuple[str, int]]
    device: torch.device
    cache: ModelCache
    #: (k, seed) -> (row indices of the shots in the support pool, the shots as a SliceSet).
    _supports: dict[tuple[int, int], tuple[np.ndarray, SliceSet]] = field(default_factory=dict)
    #: (k, seed) -> unlabeled set; not an init field, so a ``dataclasses.replace`` copy with
    #: another support pool (the tuning split) starts with an empty cache.
    _unlabeled: dict[tuple[int, int], SliceSet] = field(default_factory=dict, init=False, repr=False)
    #: The control rows ``run.controls`` added to the grid (row -> the k it runs at).
    controls: dict[str, set[int]] = field(default_factory=dict, init=False, repr=False)

    @property
    def eligible(self) -> int:
        """Slices a support set is drawn from: the largest valid k (what ``all`` means)."""
        return support_pool_size(self.support_pool, self.plan.data.include_negative)

    @property
    def resolution(self) -> str:
        """Where the test set is scored: ``"native"`` (each slice at its original size, see
        :func:`runner.run_cell`) or ``"HxW"`` (the model size, when originals are unknown)."""
        return "native" if self.test_set.native is not None else "{}x{}".format(*self.test_set.shape)

    @cached_property
    def data_fingerprint(self) -> dict:
        """What the cells' data is (every cell's provenance); names the source's label origin
        when a model made its labels, so the leaderboard can say that its source is machine-labeled."""
        out = {
            "source": self.source.fingerprint,
            "target": self.target.fingerprint,
            "split": config_hash(self.split.to_json()),
        }
        origin = label_origin(self.source)
        if origin != "manual":
            out["source_labels"] = origin
            out["source_sites"] = (self.source.meta or {}).get("sites", {})
        return out

    def _shots(self, k: int, seed: int) -> tuple[np.ndarray, SliceSet]:
        key = (k, seed)
        if key not in self._supports:
            if k == 0:
                idx = np.empty(0, dtype=np.int64)
            else:
                idx = support_indices(self.support_pool, k, seed=seed, include_negative=self.plan.data.include_negative)
            self._supports[key] = (idx, self.support_pool.subset(idx))
        return self._supports[key]

    def shot_rows(self, k: int, seed: int) -> np.ndarray:
        """Row indices in the support pool of the (k, seed) shots (see :meth:`support_set`)."""
        return self._shots(k, seed)[0]

    def support_set(self, k: int, seed: int) -> SliceSet:
        """The k-shot support set of ``seed``: identical for every learner (paired), nested in k;
        empty at k = 0."""
        return self._shots(k, seed)[1]

    def unlabeled_set(self, k: int, seed: int) -> SliceSet:
        """Every target training slice not labeled in this episode, labels stripped: the
        unlabeled pool plus the support-pool slices not drawn as the (k, seed) shots.

        Test patients are never in it (they are in neither pool), and the shots never are.
        """
        key = (k, seed)
        if key not in self._unlabeled:
            shots = self._shots(k, seed)[0]
            rest = self.support_pool.subset(np.setdiff1d(np.arange(len(self.support_pool)), shots))
            rest = replace(rest, masks=np.zeros_like(rest.masks), labeled=np.zeros_like(rest.labeled))
            merged = SliceSet.concat([self.unlabeled_pool, rest], name=f"{self.target.name} unlabeled")
            fp = config_hash([self.unlabeled_pool.fingerprint, self.support_pool.fingerprint, "unlabeled", k, seed])
            self._unlabeled[key] = replace(merged, fingerprint=fp)
        return self._unlabeled[key]

    def labeled_fraction(self, k: int) -> float:
        return labeled_fraction(k, self.eligible) if k else 0.0

    def cell_plan(self, learner_cls, k: int, k_label: str) -> CellPlan:
        """The plan's entry of the learner at k; a learner the run did not plan (a test's, a
        tuning trial's) is added to the plan once, from the plan's own tables."""
        try:
            return self.plan.cell(learner_cls.name, k_label)
        except KeyError:
            self.plan = add_cell(self.plan, learner_cls, k, k_label)
            return self.plan.cell(learner_cls.name, k_label)

    def context(
        self,
        learner_cls,
        k: int,
        seed: int,
        callback: ProgressCallback | None = None,
        replicate: int = 0,
        k_label: str | None = None,
    ) -> LearnerContext:
        """The cell's context: the (k, seed) shots (empty at k = 0 and for learners that take no
        target labels) and, for learners with ``uses_unlabeled``, :meth:`unlabeled_set`;
        its training randomness comes from ``training_seed(seed, replicate)``."""
        if k == 0 and learner_cls.uses_target and not (learner_cls.supports_k0 or learner_cls.k_independent):
            raise ValueError(f"learner {learner_cls.name!r} needs labeled target shots; it has no k = 0 cell")
        support = self.support_set(k if learner_cls.uses_target else 0, seed)
        return LearnerContext(
            learner=learner_cls.name,
            _source_train=self.source_train if learner_cls.uses_source else None,
            _source_val=self.source_val if learner_cls.uses_source else None,
            support=support,
            _unlabeled=self.unlabeled_set(k if learner_cls.uses_target else 0, seed)
            if learner_cls.uses_unlabeled
            else None,
            k=k if learner_cls.uses_target else 0,
            seed=training_seed(seed, replicate),
            train=self.plan.train,
            model=self.plan.model,
            params=Params(self.cell_plan(learner_cls, k, str(k) if k_label is None else k_label).values),
            device=self.device,
            cache=self.cache,
            callback=callback,
            pretrainer=pretrained_source_model,
        )


def resolve_grid_shots(spec: str, pool_size: int) -> list[tuple[str, int]]:
    """``--shots`` with k = 0 allowed (the unsupervised setting): ``"0,1,5,20"`` ->
    ``[("0", 0), ("1", 1), ...]``; every other entry as :func:`resolve_shots` reads it."""
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    for item in items:
        if item.lstrip("-").isdigit() and int(item) < 0:
            raise ValueError(f"shots entry {item!r}: k must be at least 0 (0 = no target labels)")
    zero = [s for s in items if s == "0"]
    rest = [s for s in items if s != "0"]
    if not items:
        raise ValueError("--shots is empty; give k values such as 0,1,5,20")
    return ([("0", 0)] if zero else []) + (resolve_shots(",".join(rest), pool_size) if rest else [])


def prepare(plan: RunPlan | dict, out_dir: Path, *, device: str | None = None) -> Benchmark:
    """Load source and target, split by patient (saving/verifying ``split.json``), resolve shots.

    A config dict is resolved into its plan first (``harness/planning.py``)."""
    if isinstance(plan, dict):
        plan = run_plan(plan)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = plan.data
    cache_dir = Path(data.cache_dir) if data.cache_dir else None
    source = load_run_domain(data, "source")
    target = load_run_domain(data, "target")
    if source.shape != target.shape:
        raise ValueError(f"source {source.shape} and target {target.shape} slice sizes differ; set data.size")

    sp = data.split
    folds, fold = int(sp.get("folds", 0)), int(sp.get("fold", 0))
    # A dataset's own test split replaces the fold protocol (split_target says so; fold must be 0).
    own_test = bool(folds) and has_own_test_split(target)
    split_path = out_dir / "split.json"
    if split_path.is_file():
        split = load_split(split_path)
        verify_split(split, target)
        if (len(split.folds), split.fold if split.folds else 0) != ((0, 0) if own_test else (folds, fold)):
            raise ValueError(
                f"{split_path} holds {f'fold {split.fold} of {len(split.folds)}' if split.folds else 'a split without folds'}"
                f", but the config asks for {f'fold {fold} of {folds}' if folds else 'no folds'}; "
                "use another --out for each fold"
            )
    else:
        split = split_target(
            target,
            fractions=(float(sp["support"]), float(sp["unlabeled"]), float(sp["test"])),
            seed=int(sp["seed"]),
            folds=folds,
            fold=fold,
        )
        save_split(split, split_path)
    pools = split.pools(target)
    train_p, val_p = split_source(source, val_fraction=float(sp["source_val"]), seed=int(sp["seed"]))
    # Subsets get their own fingerprints, so cached models keyed on them follow the split.
    source_train = source.subset(source.rows_of(train_p))
    source_train = replace(
        source_train.subset(np.flatnonzero(source_train.labeled)),
        fingerprint=config_hash([source.fingerprint, "train", sorted(train_p)]),
    )
    source_val = replace(
        source.subset(source.rows_of(val_p)), fingerprint=config_hash([source.fingerprint, "val", sorted(val_p)])
    )
    # Only the test set keeps its original-resolution masks (scored there); the pools train at data.size.
    test = replace(pools["test"], native=native_slices(pools["test"]))
    bench = Benchmark(
        plan=plan,
        out_dir=out_dir,
        source=source,
        target=target,
        source_train=source_train,
        source_val=source_val,
        split=split,
        support_pool=pools["support"],
        unlabeled_pool=pools["unlabeled"],
        test_set=test,
        shots=[],
        device=resolve_device(device or plan.run.device),
        cache=ModelCache((cache_dir or cache_root()) / "models"),
    )
    bench.shots = resolve_grid_shots(plan.run.shots, bench.eligible)
    log.info(
        "source %s: %d train / %d val slices; target %s: support %d (%d eligible), unlabeled %d, test %d slices",
        source.name,
        len(source_train),
        len(source_val),
        target.name,
        len(bench.support_pool),
        bench.eligible,
        len(bench.unlabeled_pool),
        len(test),
    )
    return bench
