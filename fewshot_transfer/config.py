"""Run configuration: defaults < TOML file < command-line overrides (LibFewShot-style layering).

The defaults below *are* the quick profile (``configs/quick.toml`` spells them out and a
test keeps the two equal). Sections are kept apart the nnU-Net way: ``[data]`` and
``[model]`` fix the benchmark, ``[train]`` holds rule-of-thumb schedules, and
``[learners.NAME]`` holds per-learner hyperparameters (tuned values land there via
``ftbench tune`` -> ``best.toml``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The default run's learners: the three references (scratch, source-only, finetune) and one
#: learner of every other family (adversarial, meta, semi-supervised), the set that fits the
#: default grid (k = 0, 1, 5, 20 x 3 seeds, with dual-adv's control at k = 0) in under ten
#: minutes on a 2-core CPU (benchmarks/README.md); ``--learners all`` runs every one.
DEFAULT_LEARNERS = "scratch,source-only,finetune,dual-adv,reptile,pseudo-label-cap"

DEFAULTS: dict[str, Any] = {
    "profile": "quick",
    "tuned_from": "",
    "data": {
        "source": "phantom:cap",
        "target": "phantom:covid",
        "size": 64,
        "cache_dir": "",
        "phantom": {
            "source_patients": 24,
            "target_patients": 30,
            "slices_per_patient": 12,
            "seed": 0,
        },
        "split": {
            "support": 0.4,
            "unlabeled": 0.2,
            "test": 0.4,
            "seed": 0,
            "source_val": 0.2,
            # K-fold protocol for a target without its own test split: 0 = off (fractions
            # above); K >= 2 = the labeled patients in K folds, test = fold ``fold`` (0..K-1).
            "folds": 0,
            "fold": 0,
        },
        "include_negative": 0.0,
    },
    "model": {"base": 8, "depth": 4, "norm": "group", "dropout": 0.0},
    "train": {
        "batch_size": 8,
        "lr": 0.002,
        "steps": 200,
        "pretrain_steps": 500,
        "eval_batch": 64,
        "augment": True,
        "threshold": 0.5,
        "weight_decay": 0.0,
    },
    "learners": {},
    "run": {
        "shots": "0,1,5,20",
        "seeds": 3,
        "learners": DEFAULT_LEARNERS,
        "device": "cpu",
        "out": "runs/quick",
        "plots": False,
        # One torch thread per cell: a cell's numbers must not depend on the machine's core count.
        "threads": 1,
        # "defaults" = every learner's code defaults; "tuned" = each learner's best of
        # ``trials`` Optuna trials on the validation split of the support pool (tuning/protocol.py).
        "protocol": "defaults",
        # Equal budget: this many random draws per learner and k (docs/protocol.md).
        "trials": 20,
        # Which labels choose the hyperparameters: val, shots, source-val or oracle (harness/selection.py).
        "selection": "val",
        "tune_shots": "",
        "tune_episodes": 3,
        "jobs": 0,
        "plugins": [],
        # Control arms added as rows (learners/controls.py): "" = none, "all" = every requested
        # learner's, or a comma list of learners, NAME@K = at k = K only. The default adds
        # dual-adv's (lambda_adv = 0) at k = 0, where it is dual-adv's reference (the same
        # source-training stream without the adversary); at k >= 1 the adversary's effect is a
        # few hundredths (results/claims), more than 3 seeds resolve. Controls that are requested
        # learners anyway (finetune's scratch, reptile's and pseudo-label-cap's finetune) give
        # their mechanism-gain column at no cost.
        "controls": "dual-adv@0",
        # Training replicates per episode (another initialisation, batch order and
        # augmentation on the same shots and pools), averaged per seed before pairing; use
        # R > 1 where training noise dominates the episode-to-episode spread (docs/protocol.md).
        "replicates": 1,
        # Portable floats: kernels whose bits do not depend on the x86-64 CPU, at about 2.5x the
        # fit time (fewshot_transfer/portable.py); part of the run identity when on.
        "portable": False,
    },
    # What is shown, not what is measured (no identity section): extra metric sets beside
    # Dice at 0.5 in the leaderboard; every cell stores all of them (METRIC_SETS).
    "eval": {"metrics": []},
}

#: Named metric sets ``eval.metrics`` / ``--metrics`` may show: "infnet" = the COVID-SemiSeg
#: table's Inf-Net evaluation (meanDic, maxDic, adpDic, meanSen, meanSpe, MAE).
METRIC_SETS = ("infnet",)


#: Config sections that define *what* is measured: a run dir, a study and a grid refuse to mix two.
IDENTITY_SECTIONS = ("data", "model", "train", "learners")

#: Ranges checked when a config is resolved (inclusive; ``None`` = open), before any work.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "data.size": (8, None),
    "data.phantom.source_patients": (2, None),
    "data.phantom.target_patients": (3, None),
    "data.phantom.slices_per_patient": (1, None),
    "data.split.support": (0.0, 1.0),
    "data.split.unlabeled": (0.0, 1.0),
    "data.split.test": (0.0, 1.0),
    "data.split.source_val": (0.0, 0.9),
    "data.split.folds": (0, None),
    "data.split.fold": (0, None),
    "data.include_negative": (0.0, 1.0),
    "model.base": (1, None),
    "model.depth": (1, None),
    "model.dropout": (0.0, 0.99),
    "train.batch_size": (1, None),
    # 0 target steps would score an untrained network as a learner's result.
    "train.steps": (1, None),
    "train.pretrain_steps": (0, None),
    "train.eval_batch": (1, None),
    "train.threshold": (0.0, 1.0),
    "train.weight_decay": (0.0, None),
    "run.threads": (0, None),
    "run.trials": (1, None),
    "run.tune_episodes": (1, None),
    "run.jobs": (0, None),
}
#: Keys that must be strictly positive.
POSITIVE = ("train.lr",)


def run_identity(cfg: dict) -> dict:
    """The identity sections of ``cfg`` (``learners`` always present), plus ``run.portable`` when on.

    Portable and native kernels give other floats for the same cell, so a run directory, a
    study or a grid never mixes the two; a native identity is what it was before the flag.
    """
    out = {s: cfg.get(s, {}) for s in IDENTITY_SECTIONS}
    out["learners"] = out["learners"] or {}
    if cfg.get("run", {}).get("portable"):
        out["run"] = {"portable": True}
    return out


def k_key(learner: str, k: int) -> str:
    """``[learners."NAME@k=K"]``: the hyperparameters a study chose for the cells at k = K only."""
    return f"{learner}@k={int(k)}"


def config_at_k(config: dict, learner: str, k: int) -> dict:
    """``config`` with ``[learners.NAME]`` updated by ``[learners."NAME@k=K"]`` (a study per k);
    the same object when there is no such table."""
    own = config.get("learners", {}).get(k_key(learner, k))
    if not own:
        return config
    table = {**config.get("learners", {}).get(learner, {}), **own}
    return {**config, "learners": {**config["learners"], learner: table}}


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` updated recursively by ``override`` (new dict; inputs untouched)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(user: dict, ref: dict, where: str = "") -> None:
    """Reject keys the defaults do not know (typos fail loudly); ``learners`` is open."""
    for key, value in user.items():
        path = f"{where}.{key}" if where else key
        if path == "learners":
            continue
        if key not in ref:
            raise ValueError(f"unknown config key {path!r}; valid keys here: {sorted(ref)}")
        if isinstance(ref[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {path!r} must be a table, got {value!r}")
            _check_keys(value, ref[key], path)


def _check_values(cfg: dict, ref: dict, where: str = "") -> None:
    """Types follow the defaults' types (an int where an int is expected, ...), ranges follow
    :data:`RANGES`; the error names the key and says what it expects."""
    for key, default in ref.items():
        path = f"{where}.{key}" if where else key
        if path == "learners" or key not in cfg:
            continue
        value = cfg[key]
        if isinstance(default, dict):
            _check_values(value, default, path)
            continue
        if isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"config key {path!r} must be a list of strings, got {value!r}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"config key {path!r} must be true or false, got {value!r}")
        elif isinstance(default, int) and path != "run.seeds":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"config key {path!r} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"config key {path!r} must be a number, got {value!r}")
            cfg[key] = float(value)
        lo, hi = RANGES.get(path, (None, None))
        if lo is not None and cfg[key] < lo:
            raise ValueError(f"config key {path!r} must be >= {lo}, got {value!r}")
        if hi is not None and cfg[key] > hi:
            raise ValueError(f"config key {path!r} must be <= {hi}, got {value!r}")
        if path in POSITIVE and cfg[key] <= 0:
            raise ValueError(f"config key {path!r} must be > 0, got {value!r}")


def load_toml(path: str | Path) -> dict:
    """Read a TOML config file with a clear error naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} not found")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {p} is not valid TOML: {exc}") from exc


def load_config_text(text: str) -> dict:
    """A config from TOML text (as stored on a study), merged onto the defaults."""
    return deep_merge(DEFAULTS, tomllib.loads(text))


def parse_value(text: str) -> Any:
    """A command-line value as TOML would read it (numbers, booleans, strings, arrays)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (``--set``)."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.steps=50)")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a table")
        node[keys[-1]] = parse_value(raw.strip())
    _check_keys(out, DEFAULTS)
    _check_values(out, DEFAULTS)
    _check_folds(out)
    unknown = sorted(set(out.get("eval", {}).get("metrics", [])) - set(METRIC_SETS))
    if unknown:
        raise ValueError(f"config key 'eval.metrics': unknown metric set(s) {unknown}; choose from {list(METRIC_SETS)}")
    return out


def _check_folds(cfg: dict) -> None:
    """``data.split.folds`` is 0 (off) or >= 2, and ``data.split.fold`` one of its folds."""
    sp = cfg.get("data", {}).get("split", {})
    folds, fold = sp.get("folds", 0), sp.get("fold", 0)
    if folds == 1:
        raise ValueError("config key 'data.split.folds' must be 0 (no folds) or >= 2, got 1")
    if folds == 0 and fold != 0:
        raise ValueError(f"config key 'data.split.fold' = {fold} needs 'data.split.folds' >= 2 (0 = no folds)")
    if folds and fold >= folds:
        raise ValueError(
            f"config key 'data.split.fold' must be in 0..{folds - 1} for data.split.folds = {folds}, got {fold}"
        )


def resolve_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults < file < overrides, validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        user = load_toml(path)
        _check_keys(user, DEFAULTS)
        cfg = deep_merge(cfg, user)
    return apply_overrides(cfg, overrides or [])


def config_hash(obj: Any) -> str:
    """Stable short hash of any JSON-able object (cache keys, provenance)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def to_toml(cfg: dict) -> str:
    """Serialize a (nested, JSON-like) config to TOML text; enough for our own configs."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return json.dumps(str(v))

    def emit(table: dict, prefix: str) -> None:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and (plain or not nested):
            lines.append(f"\n[{prefix}]")
        for k, v in plain.items():
            lines.append(f"{_key(k)} = {scalar(v)}")
        for k, v in nested.items():
            emit(v, f"{prefix}.{_key(k)}" if prefix else _key(k))

    emit(cfg, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
