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
from fewshot_transfer.data.loader import load_domain
from fewshot_transfer.data.samplers import labeled_fraction, resolve_shots, support_indices, support_pool_size
from fewshot_transfer.data.slices import SliceSet
from fewshot_transfer.data.splits import TargetSplit, load_split, save_split, split_source, split_target, verify_split
from fewshot_transfer.training import LearnerContext, ModelCache, ProgressCallback

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``, with a clear error when CUDA is asked for but absent."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} requested but torch.cuda.is_available() is False; use --device cpu")
    return torch.device(name)


@dataclass
class Benchmark:
    config: dict
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
    _supports: dict[tuple[int, int], SliceSet] = field(default_factory=dict)

    @property
    def eligible(self) -> int:
        """Slices a support set is drawn from: the largest valid k (what ``all`` means)."""
        return support_pool_size(self.support_pool, float(self.config["data"]["include_negative"]))

    @cached_property
    def data_fingerprint(self) -> dict:
        return {
            "source": self.source.fingerprint,
            "target": self.target.fingerprint,
            "split": config_hash(self.split.to_json()),
        }

    def support_set(self, k: int, seed: int) -> SliceSet:
        """The k-shot support set of ``seed``: identical for every learner (paired), nested in k."""
        key = (k, seed)
        if key not in self._supports:
            idx = support_indices(
                self.support_pool, k, seed=seed, include_negative=float(self.config["data"]["include_negative"])
            )
            self._supports[key] = self.support_pool.subset(idx)
        return self._supports[key]

    def labeled_fraction(self, k: int) -> float:
        return labeled_fraction(k, self.eligible)

    def context(
        self, learner_cls, k: int, seed: int, callback: ProgressCallback | None = None
    ) -> LearnerContext:
        support = self.support_set(max(k, 1), seed) if learner_cls.uses_target else self.support_set(1, seed).subset([])
        return LearnerContext(
            learner=learner_cls.name,
            _source_train=self.source_train if learner_cls.uses_source else None,
            _source_val=self.source_val if learner_cls.uses_source else None,
            support=support,
            _unlabeled=self.unlabeled_pool if learner_cls.uses_unlabeled else None,
            k=k,
            seed=seed,
            config=self.config,
            params=learner_cls.resolve_params(self.config),
            device=self.device,
            cache=self.cache,
            callback=callback,
        )


def _load(spec: str, cfg: dict, role: str, cache_dir: Path | None) -> SliceSet:
    data_cfg = cfg["data"]
    ph = data_cfg["phantom"]
    phantom = {
        "n_patients": int(ph["source_patients" if role == "source" else "target_patients"]),
        "n_slices": int(ph["slices_per_patient"]),
        "seed": int(ph["seed"]),
    }
    return load_domain(spec, size=int(data_cfg["size"]), cache_dir=cache_dir, phantom=phantom)


def prepare(config: dict, out_dir: Path, *, device: str | None = None) -> Benchmark:
    """Load source and target, split by patient (saving/verifying ``split.json``), resolve shots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_cfg = config["data"]
    cache_dir = Path(data_cfg["cache_dir"]) if data_cfg.get("cache_dir") else None
    source = _load(str(data_cfg["source"]), config, "source", cache_dir)
    target = _load(str(data_cfg["target"]), config, "target", cache_dir)
    if source.shape != target.shape:
        raise ValueError(f"source {source.shape} and target {target.shape} slice sizes differ; set data.size")

    sp = data_cfg["split"]
    split_path = out_dir / "split.json"
    if split_path.is_file():
        split = load_split(split_path)
        verify_split(split, target)
    else:
        split = split_target(target, fractions=(float(sp["support"]), float(sp["unlabeled"]), float(sp["test"])), seed=int(sp["seed"]))
        save_split(split, split_path)
    pools = split.pools(target)
    train_p, val_p = split_source(source, val_fraction=float(sp["source_val"]), seed=int(sp["seed"]))
    # Subsets get their own fingerprints, so cached models keyed on them follow the split.
    source_train = source.subset(source.rows_of(train_p))
    source_train = replace(
        source_train.subset(np.flatnonzero(source_train.labeled)),
        fingerprint=config_hash([source.fingerprint, "train", sorted(train_p)]),
    )
    source_val = replace(source.subset(source.rows_of(val_p)), fingerprint=config_hash([source.fingerprint, "val", sorted(val_p)]))
    test = pools["test"]
    bench = Benchmark(
        config=config,
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
        device=resolve_device(device or str(config["run"]["device"])),
        cache=ModelCache((cache_dir or cache_root()) / "models"),
    )
    bench.shots = resolve_shots(str(config["run"]["shots"]), bench.eligible)
    log.info(
        "source %s: %d train / %d val slices; target %s: support %d (%d eligible), unlabeled %d, test %d slices",
        source.name, len(source_train), len(source_val), target.name,
        len(bench.support_pool), bench.eligible, len(bench.unlabeled_pool), len(test),
    )
    return bench
