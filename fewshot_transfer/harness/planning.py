"""Resolving a validated run config into its :class:`~fewshot_transfer.plan.RunPlan`, once.

This is the one module below ``commands/`` that reads the raw config dict. It resolves the
learners, the control rows and, per (learner, k), the parameters with their origins, the
control row, the selection rule and the studies the parameters came from; everything after it
(the runner, the tuning code, the learners' context, the leaderboard's command) reads the plan.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from fewshot_transfer import learners
from fewshot_transfer.config import config_at_k, config_hash, k_key
from fewshot_transfer.harness.selection import DEFAULT_RULE, DEFAULTS, RULES, applied_rule, rule_label, study_name
from fewshot_transfer.learners.base import REGISTRY, SCHEDULE_KEYS, Learner
from fewshot_transfer.learners.controls import control_row, with_controls
from fewshot_transfer.plan import (
    CellPlan,
    ControlArm,
    DataPlan,
    ParamSource,
    RunPlan,
    RunSettings,
    TrainPlan,
    TunedFrom,
)

#: The file a run directory's plan is written to (next to ``config.toml``).
PLAN_FILE = "plan.json"


def resolve_learners(spec: str | list[str], config: dict | None = None) -> list[str]:
    """``all`` or a comma list of registered learner names, validated; with ``config``, every
    learner's hyperparameters are resolved too, so a bad value fails before any work."""
    names = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",") if s.strip()]
    if names == ["all"]:
        names = learners.available()
    for n in names:
        cls = learners.get(n)
        if config is not None:
            cls.resolve_params(config)
            for key in config.get("learners", {}):
                if key.startswith(f"{n}@k="):
                    cls.resolve_params(config_at_k(config, n, int(key.split("=", 1)[1])))
    return names


def resolve_seeds(spec: int | str | list) -> list[int]:
    """``3`` -> [0, 1, 2]; ``"0,4,7"`` or a list -> those seeds."""
    if isinstance(spec, list):
        return [int(s) for s in spec]
    text = str(spec).strip()
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    n = int(text)
    if n < 1:
        raise ValueError(f"--seeds must be >= 1, got {n}")
    return list(range(n))


def control_rows(names: list[str], spec: str, ks: list[int], config: dict, strict: bool = True) -> dict[str, set[int]]:
    """The control-arm rows to add for ``run.controls`` = ``spec`` ("", "none", "all" or a comma
    list of the requested learners, each optionally ``NAME@K`` = its control at that k only):
    row -> the k it is needed at (``learners/controls.py``).

    ``strict`` = False (the config's default, not the user's ``--controls``) skips listed
    learners the run does not have instead of refusing."""
    text = str(spec or "").strip()
    if text in ("", "none"):
        return {}
    entries = [(n, None) for n in names] if text == "all" else [_control_entry(s) for s in text.split(",") if s.strip()]
    unknown = [n for n, _ in entries if n not in names]
    if unknown and strict:
        raise ValueError(
            f"run.controls names {', '.join(unknown)}, not among the run's learners ({', '.join(names)}); "
            "use 'all', 'none' or a comma list of them (NAME@K: at k = K only)"
        )
    wanted = [(n, at) for n, at in entries if n in names]
    for name, _ in wanted:
        learners.get(name)  # discovers the built-ins (and their control rows) when not yet imported
    return with_controls(wanted, ks, config, requested=names)


def _control_entry(item: str) -> tuple[str, int | None]:
    """``"dual-adv"`` -> (name, None = every k); ``"dual-adv@0"`` -> (name, 0)."""
    name, sep, k = item.strip().partition("@")
    if not sep:
        return name, None
    try:
        at = int(k)
    except ValueError:
        at = -1
    if at < 0:
        raise ValueError(f"run.controls entry {item.strip()!r}: after '@' give a k >= 0 (e.g. dual-adv@0)")
    return name.strip(), at


def cell_tuned_from(config: dict, learner: str, k: int, k_label: str) -> TunedFrom:
    """The studies a learner's hyperparameters at this k came from: with a study per k
    (``[learners."NAME@k=K"]``) that k's own study, else (one study for every k, or a
    ``best.toml``) the learner's studies named ``LEARNER-k...``; empty when it was not tuned."""
    run = TunedFrom.read(config.get("tuned_from"))
    tables = config.get("learners", {})
    if not run:
        return run
    if any(key.startswith(f"{learner}@k=") for key in tables):
        if k_key(learner, k) not in tables:
            return TunedFrom()
        names = {study_name(learner, k_label, rule) for rule in RULES}
        return TunedFrom(tuple(s for s in run.studies if s.study in names))
    if learner not in tables:
        return TunedFrom()
    own = tuple(s for s in run.studies if s.study.startswith(f"{learner}-k"))
    return TunedFrom(own) if own else run


def selection_text(config: dict) -> str:
    """How the hyperparameters of a run were chosen, in words (the leaderboard header shows it)."""
    run = config.get("run", {})
    if run.get("protocol") == "tuned":
        rule = run.get("selection", DEFAULT_RULE)
        where = f"one study at k = {run['tune_shots']} for every k" if run.get("tune_shots") else "a study per k"
        return (
            f"tuned, {int(run['trials'])} random draws per learner and k, selection rule {rule} "
            f"({rule_label(rule)}; {where})"
        )
    return "defaults"


def cell_selection(config: dict, tuned_from: TunedFrom, k: int) -> str:
    """The selection token of one cell (a rule of ``harness/selection.py`` or ``defaults``)."""
    if not tuned_from:
        return DEFAULTS
    run = config.get("run", {})
    rule = str(run.get("selection") or DEFAULT_RULE)
    if run.get("protocol") == "tuned" and not run.get("tune_shots"):
        return applied_rule(rule, k)
    return rule


def _origins(config: dict, owner: str, k: int, values: dict[str, Any], tuned: TunedFrom) -> dict[str, ParamSource]:
    """Each value with where it came from: the per-k table a study wrote, ``[learners.OWNER]``
    (a study's draw when the cell is tuned, else the user's), the ``[train]`` schedule, or code."""
    tables = config.get("learners", {})
    per_k, own = tables.get(k_key(owner, k), {}), tables.get(owner, {})
    study = tuned.studies[0] if tuned else None
    out: dict[str, ParamSource] = {}
    for name, value in values.items():
        if name in per_k:
            out[name] = ParamSource(value, "tuned", f'learners."{k_key(owner, k)}".{name}', study)
        elif name in own:
            origin = "tuned" if study is not None else "config"
            out[name] = ParamSource(value, origin, f"learners.{owner}.{name}", study)
        elif name in SCHEDULE_KEYS:
            out[name] = ParamSource(value, "config", f"train.{name}")
        else:
            out[name] = ParamSource(value, "default")
    return out


def cell_plan(config: dict, learner: str | type[Learner], k: int, k_label: str) -> CellPlan:
    """The resolved entry of ``learner`` at k (a control row takes its learner's per-k table and
    studies); a class not in the registry (a test's) has no control row."""
    cls = learners.get(learner) if isinstance(learner, str) else learner
    learner = cls.name
    owner = cls.control_of or learner
    tuned = cell_tuned_from(config, owner, k, k_label)
    values = dict(cls.resolve_params(config_at_k(config, owner, k)))
    arm = cls.control
    return CellPlan(
        learner=learner,
        k=k,
        k_label=k_label,
        family=cls.family,
        params=_origins(config, owner, k, values, tuned),
        control=control_row(learner, k, config) if REGISTRY.get(learner) is cls else None,
        control_of=cls.control_of,
        arm=ControlArm(dict(arm.off), arm.same_as) if arm is not None else None,
        selection_rule=cell_selection(config, tuned, k),
        tuned_from=tuned,
    )


def run_plan(config: dict) -> RunPlan:
    """The run-level plan of a validated config (no cell entries yet: they need the shots)."""
    run, data, train = config["run"], config["data"], config["train"]
    learners.load_plugins(run.get("plugins", []))  # plugin learners' names resolve below
    settings = RunSettings(
        shots=str(run["shots"]),
        seeds=resolve_seeds(run["seeds"]),
        learners=resolve_learners(run["learners"], config),
        device=str(run["device"]),
        out=str(run["out"]),
        plots=bool(run["plots"]),
        threads=int(run.get("threads") or 0),
        protocol=str(run["protocol"]),
        trials=int(run["trials"]),
        selection=str(run["selection"]),
        tune_shots=str(run.get("tune_shots") or ""),
        tune_episodes=int(run["tune_episodes"]),
        jobs=int(run.get("jobs") or 0),
        plugins=list(run.get("plugins", [])),
        controls=str(run.get("controls") or ""),
        replicates=int(run.get("replicates", 1)),
        portable=bool(run.get("portable")),
        selection_text=selection_text(config),
    )
    return RunPlan(
        data=DataPlan.from_table(data),
        model=dict(config["model"]),
        train=TrainPlan(
            batch_size=int(train["batch_size"]),
            lr=float(train["lr"]),
            steps=int(train["steps"]),
            pretrain_steps=int(train["pretrain_steps"]),
            eval_batch=int(train["eval_batch"]),
            augment=bool(train.get("augment", True)),
            threshold=float(train["threshold"]),
            weight_decay=float(train.get("weight_decay", 0.0)),
        ),
        run=settings,
        metrics=list(config.get("eval", {}).get("metrics", [])),
        tuned_from=TunedFrom.read(config.get("tuned_from")),
        config_hash=config_hash(config),
        learner_tables={name: dict(table) for name, table in config.get("learners", {}).items()},
    )


def as_config(plan: RunPlan) -> dict:
    """The parts of a config that learners' ``resolve_params`` and the control rule read,
    rebuilt from ``plan`` (so cell entries can be added to a plan without the raw config)."""
    run = plan.run
    return {
        "train": asdict(plan.train),
        "learners": plan.learner_tables,
        "tuned_from": plan.tuned_from.to_config(),
        "run": {"protocol": run.protocol, "selection": run.selection, "tune_shots": run.tune_shots},
    }


def with_cells(plan: RunPlan, rows: list[str], shots: list[tuple[str, int]]) -> RunPlan:
    """``plan`` with an entry for every row at every k it can have a cell at (k-independent
    learners: one entry ``any``), the entries it holds kept."""
    config = as_config(plan)
    held = {(c.learner, c.k_label) for c in plan.cells}
    new: list[CellPlan] = []
    for name in rows:
        cls = learners.get(name)
        ks = [("any", 0)] if cls.k_independent else shots
        for label, k in ks:
            if (name, label) not in held:
                new.append(cell_plan(config, name, k, label))
                held.add((name, label))
    return replace(plan, cells=(*plan.cells, *new)) if new else plan


def with_tables(plan: RunPlan, tables: dict[str, dict[str, Any]]) -> RunPlan:
    """``plan`` with other ``[learners]`` tables (a trial's or a check's draw), its entries dropped."""
    return replace(plan, learner_tables={name: dict(table) for name, table in tables.items()}, cells=())


def add_cell(plan: RunPlan, learner: str | type[Learner], k: int, k_label: str) -> RunPlan:
    """``plan`` with the entry of ``learner`` at exactly (k, ``k_label``) added."""
    return replace(plan, cells=(*plan.cells, cell_plan(as_config(plan), learner, k, k_label)))


def grid_rows(
    plan: RunPlan, shots: list[tuple[str, int]], strict_controls: bool
) -> tuple[list[str], dict[str, set[int]]]:
    """The run's learners and the control rows ``run.controls`` adds (row -> its k)."""
    names = plan.run.learners
    controls = control_rows(names, plan.run.controls, [k for _, k in shots], as_config(plan), strict=strict_controls)
    return names, controls
