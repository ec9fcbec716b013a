"""Tune one learner's hyperparameters with Optuna on a validation split of the support pool.

What a trial measures
---------------------
The target **support pool** (the patients the benchmark draws shots from) is split once,
by patient, into a *tuning-support* part and a *validation* part (seeded, lesion-burden
stratified with :func:`fewshot_transfer.data.splits.split_target`, checked with the leakage
guard against the test set and the unlabeled pool). A trial writes the sampled values into
``config["learners"][NAME]`` and runs ``run_cell`` on a copy of the benchmark whose
support pool is the tuning-support part and whose "test" set is the validation part's
labeled slices, once per episode (seed 0..E-1). The objective is the mean over episodes of
the validation Dice (mean over lesion-positive slices, the leaderboard's Dice). The test set
is never loaded into a trial.

Every trial sees the same episodes (seed e draws the same k shots from the tuning-support
pool and reuses the same cached source pretraining), so the trials are compared *paired*.

Pruning
-------
After episode e the trial reports to Optuna at ``step = e``:

* ``median`` (default, :class:`optuna.pruners.MedianPruner`): the running mean of the
  validation Dice over episodes 0..e. Step e is the same set of episodes for every trial,
  so the median it is compared with is over identical episodes.
* ``wilcoxon`` (:class:`optuna.pruners.WilcoxonPruner`): the Dice of episode e itself;
  the pruner runs a paired signed-rank test against the best trial over the shared
  episodes. With 3 episodes the smallest one-sided p-value is 1/8, so it only prunes
  with ~5+ episodes.

The training loss that the learner's progress callback receives every step is shown in the
progress display but not used for pruning: it is a different quantity (it keeps falling
when a large learning rate overfits the k shots) and an Optuna trial has one
intermediate-value series in the study's direction. ``trial.should_prune()`` can only
change after a ``report``, so it is checked at episode boundaries.

Storage
-------
Any SQLAlchemy URL Optuna's :class:`~optuna.storages.RDBStorage` accepts (default
``sqlite:///OUT/study.db``). Heartbeats mark a trial whose process died as failed after the
grace period and a retry callback re-queues it with the same parameters. On SQLite every
transaction starts with ``BEGIN IMMEDIATE`` (see :func:`make_storage`) so claiming a queued
trial is atomic there too.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
import math
import os
import socket
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from fewshot_transfer.config import DEFAULTS, config_hash, deep_merge, run_identity, to_toml

log = logging.getLogger(__name__)

#: Seconds between heartbeats of a running trial, and silence after which it counts as dead.
DEFAULT_HEARTBEAT = 60
DEFAULT_GRACE = 180
#: How often a trial whose worker died is re-queued.
DEFAULT_MAX_RETRY = 2
STUDY_ATTR = "ftbench_tune"


# --------------------------------------------------------------------------- storage


def default_storage(out: Path) -> str:
    """``sqlite:///OUT/study.db`` (relative paths stay relative, as optuna-dashboard expects)."""
    return f"sqlite:///{Path(out) / 'study.db'}"


def redact(url: str) -> str:
    """The storage URL with any password hidden (it ends up in best.toml and leaderboards)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy understands: show it as given
        return url


def _serialize_sqlite(engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE`` (SQLAlchemy's pysqlite recipe).

    Optuna claims a queued trial with a read-then-write (``SELECT ... FOR UPDATE``, then
    ``UPDATE``); SQLite ignores ``FOR UPDATE`` and pysqlite only begins a transaction at the
    write, so two processes can both read ``WAITING`` and both run the trial. Taking the
    write lock at ``BEGIN`` serializes those transactions.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record):  # pragma: no cover - trivial
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):  # pragma: no cover - trivial
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections were opened before the hooks


def make_storage(
    url: str,
    *,
    heartbeat: int | None = DEFAULT_HEARTBEAT,
    grace: int | None = DEFAULT_GRACE,
    max_retry: int | None = DEFAULT_MAX_RETRY,
):
    """An :class:`optuna.storages.RDBStorage` with heartbeats and retry of dead trials.

    Uses ``heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback`` where the
    installed Optuna has it (4.9+; ``failed_trial_callback``/``RetryFailedTrialCallback`` are
    its deprecated names, used on older versions).
    """
    import optuna
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.engine import make_url

    if "://" not in url:
        raise ValueError(
            f"--storage {url!r} is not a database URL; use e.g. sqlite:///runs/tune/study.db or "
            "postgresql://user:password@host:5432/dbname"
        )
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ValueError(f"--storage {redact(url)!r} is not a valid database URL ({exc})") from exc
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if parsed.drivername == "postgresql":
        # A bare postgresql:// means psycopg (3) on SQLAlchemy >= 2.1 and psycopg2 before;
        # use whichever driver is installed (the 'distributed' extra installs psycopg2).
        import importlib.util

        for driver in ("psycopg2", "psycopg"):
            if importlib.util.find_spec(driver) is not None:
                parsed = parsed.set(drivername=f"postgresql+{driver}")
                url = parsed.render_as_string(hide_password=False)
                break
    engine_kwargs: dict[str, Any]
    if is_sqlite:
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}

    kwargs: dict[str, Any] = {"heartbeat_interval": heartbeat, "grace_period": grace if heartbeat else None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if heartbeat:
                params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
                retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
                if retry_cls is not None and "heartbeat_stale_trial_callback" in params:
                    kwargs["heartbeat_stale_trial_callback"] = retry_cls(max_retry=max_retry)
                else:  # optuna < 4.9
                    kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except ImportError as exc:
        raise RuntimeError(
            f"no database driver for {parsed.get_backend_name()} storage ({exc.__cause__ or exc}); "
            "for PostgreSQL install the 'distributed' extra: pip install 'fewshot-transfer[distributed]'"
        ) from exc
    except (sa_exc.OperationalError, sa_exc.DBAPIError) as exc:
        raise RuntimeError(f"cannot open storage {redact(url)}: {getattr(exc, 'orig', exc)}") from exc
    if is_sqlite:
        _serialize_sqlite(storage.engine)
    return storage


@contextmanager
def heartbeat_thread(storage, trial_id: int) -> Iterator[None]:
    """Record heartbeats of ``trial_id`` while the block runs (for ask/tell loops).

    ``Study.optimize`` does this itself; a worker that claims trials with the storage API
    must, or a live cell would be declared dead after the grace period.
    """
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # a missed beat is not fatal; the grace period covers a few
                log.warning("heartbeat for trial id %d failed: %s", trial_id, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --------------------------------------------------------------------------- validation split


def validation_benchmark(bench, shots: str, *, val_fraction: float = 0.5, seed: int = 0):
    """A copy of ``bench`` whose support pool is the tuning part of the support pool and
    whose ``test_set`` is the validation part's labeled slices (patient-disjoint).

    Returns ``(val_bench, info)``; ``info`` names the patients of each part. ``shots`` is
    one k as in ``--shots``: a count, or a percentage / ``all`` of the tuning-support pool.
    """
    from fewshot_transfer.data.samplers import resolve_shots
    from fewshot_transfer.data.splits import check_disjoint, split_target

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    pool = bench.support_pool
    patients = pool.patient_ids()
    if len(patients) < 2:
        raise ValueError(
            f"the support pool has {len(patients)} patient(s); tuning needs at least 2 "
            "(one part for the shots, one for validation); raise data.split.support"
        )
    try:
        part = split_target(pool, fractions=(1.0 - val_fraction, 0.0, val_fraction), seed=seed)
    except ValueError as exc:
        raise ValueError(f"cannot carve a validation split from the support pool ({len(patients)} patients): {exc}") from exc
    tune_p, val_p = tuple(part.support), tuple(part.test)
    # Anything not placed (there are no unlabeled rows in the support pool) stays out.
    check_disjoint(
        {
            "tune-support": tune_p,
            "validation": val_p,
            "test": bench.split.test,
            "unlabeled": bench.split.unlabeled,
        }
    )
    tune_pool = pool.subset(pool.rows_of(list(tune_p)))
    val = pool.subset(pool.rows_of(list(val_p)))
    val = val.subset(np.flatnonzero(val.labeled))
    if not (val.lesion_fraction() > 0).any():
        raise ValueError(
            f"the validation patients {list(val_p)} have no lesion-positive labeled slice; "
            "try another --val-fraction or data.split.seed"
        )
    val_bench = dataclasses.replace(
        bench,
        support_pool=tune_pool,
        test_set=val,
        split=dataclasses.replace(bench.split, support=tune_p, test=val_p),
        shots=[],
        _supports={},
    )
    resolved = resolve_shots(str(shots), val_bench.eligible)
    if len(resolved) != 1:
        raise ValueError(f"--shots must be one k for tuning (one study per k), got {shots!r}")
    label, k = resolved[0]
    val_bench.shots = [(label, k)]
    info = {
        "tune_support": list(tune_p),
        "validation": list(val_p),
        "validation_slices": len(val),
        "tune_support_eligible": val_bench.eligible,
        "excluded_test": list(bench.split.test),
        "val_fraction": val_fraction,
        "seed": seed,
    }
    return val_bench, info


# --------------------------------------------------------------------------- search space


class _Probe:
    """A stand-in trial that records which names a search space suggests (first choices)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def suggest_float(self, name, low, high, **_kw):
        self.names.append(name)
        return low

    def suggest_int(self, name, low, high, **_kw):
        self.names.append(name)
        return low

    def suggest_categorical(self, name, choices):
        self.names.append(name)
        return choices[0]


class PinnedTrial:
    """Wraps a trial: names pinned in ``[learners.NAME]`` return their value unsearched."""

    def __init__(self, trial, pinned: dict) -> None:
        self._trial = trial
        self._pinned = pinned

    def _pick(self, fn: Callable, name: str, *args, **kwargs):
        return self._pinned[name] if name in self._pinned else fn(name, *args, **kwargs)

    def suggest_float(self, name, *args, **kwargs):
        return self._pick(self._trial.suggest_float, name, *args, **kwargs)

    def suggest_int(self, name, *args, **kwargs):
        return self._pick(self._trial.suggest_int, name, *args, **kwargs)

    def suggest_categorical(self, name, *args, **kwargs):
        return self._pick(self._trial.suggest_categorical, name, *args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._trial, attr)


def searched_names(learner_cls, pinned: dict) -> tuple[list[str], list[str]]:
    """(names the study searches, names pinned by the config) for ``learner_cls``."""
    probe = _Probe()
    learner_cls.search_space(probe)
    names = list(dict.fromkeys(probe.names))
    if not names:
        raise ValueError(f"learner {learner_cls.name!r} declares no hyperparameters to tune (empty search_space)")
    free = [n for n in names if n not in pinned]
    fixed = [n for n in names if n in pinned]
    if not free:
        raise ValueError(
            f"every hyperparameter learner {learner_cls.name!r} searches ({', '.join(names)}) is fixed by "
            f"[learners.{learner_cls.name}] in the config; remove some of them (e.g. do not pass a best.toml "
            "of the same learner) to tune"
        )
    return free, fixed


# --------------------------------------------------------------------------- the study


@dataclasses.dataclass
class TuneSpec:
    """Everything that defines one tuning study (checked on resume and by every worker)."""

    learner: str
    shots: str
    episodes: int
    val_fraction: float
    config: dict
    storage: str
    study_name: str
    out: Path
    pruner: str = "median"
    startup_trials: int = 5
    warmup_episodes: int = 1
    sampler_seed: int | None = None
    n_trials: int = 20
    timeout: float | None = None
    heartbeat: int | None = DEFAULT_HEARTBEAT
    grace: int | None = DEFAULT_GRACE

    @property
    def seeds(self) -> list[int]:
        return list(range(self.episodes))


def make_pruner(name: str, *, startup_trials: int, warmup_episodes: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_episodes)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=max(2, warmup_episodes + 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner must be median, wilcoxon or none, got {name!r}")


def identity(spec: TuneSpec, info: dict, k: int) -> dict:
    """What a trial's number depends on; stored on the study and compared by every worker."""
    fixed = run_identity(spec.config)
    return {
        "learner": spec.learner,
        "k": k,
        "k_label": spec.shots,
        "episodes": spec.episodes,
        "val_fraction": spec.val_fraction,
        "pruner": spec.pruner,
        "config_hash": config_hash(fixed),
        "tune_support": info["tune_support"],
        "validation": info["validation"],
    }


def open_study(spec: TuneSpec, storage, ident: dict):
    """Create or load the study and check it was made for the same tuning setup."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed, constant_liar=True)
    pruner = make_pruner(spec.pruner, startup_trials=spec.startup_trials, warmup_episodes=spec.warmup_episodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=storage, study_name=spec.study_name, direction="maximize",
            sampler=sampler, pruner=pruner, load_if_exists=True,
        )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ValueError(f"study {spec.study_name!r} in {redact(spec.storage)} does not maximize; use another --study")
    saved = study.user_attrs.get(STUDY_ATTR)
    if saved is None:
        if any(True for _ in study.get_trials(deepcopy=False)) and not study.user_attrs:
            raise ValueError(
                f"study {spec.study_name!r} in {redact(spec.storage)} was not made by ftbench tune; use another --study"
            )
        study.set_user_attr(STUDY_ATTR, ident)
        study.set_user_attr("config_toml", to_toml(spec.config))
    elif saved != ident:
        diff = sorted(k for k in set(saved) | set(ident) if saved.get(k) != ident.get(k))
        raise ValueError(
            f"study {spec.study_name!r} in {redact(spec.storage)} was created for a different tuning setup "
            f"({', '.join(diff)} differ); use another --study (or the original config and flags to resume it)"
        )
    return study


def trial_config(base: dict, learner: str, params: dict) -> dict:
    cfg = copy.deepcopy(base)
    cfg.setdefault("learners", {})
    cfg["learners"][learner] = {**cfg["learners"].get(learner, {}), **params}
    return cfg


def make_objective(spec: TuneSpec, val_bench, on_progress: Callable[[str], None] | None = None):
    """The Optuna objective: mean validation Dice over ``spec.episodes`` paired episodes."""
    import optuna

    from fewshot_transfer import learners
    from fewshot_transfer.harness.runner import run_cell
    from fewshot_transfer.harness.store import CellSpec, CellStore

    cls = learners.get(spec.learner)
    pinned = dict(spec.config.get("learners", {}).get(spec.learner, {}))
    label, k = val_bench.shots[0]
    trials_dir = Path(spec.out) / "trials" / spec.study_name.replace("/", "_")

    def objective(trial) -> float:
        params = cls.search_space(PinnedTrial(trial, pinned))
        cfg = trial_config(spec.config, spec.learner, params)
        full = cls.resolve_params(cfg)  # validates the names
        trial.set_user_attr("learner_params", {**pinned, **params})
        trial.set_user_attr("worker", worker_id())
        out = trials_dir / f"trial-{trial.number:04d}"
        bench = dataclasses.replace(val_bench, config=cfg, out_dir=out, _supports=val_bench._supports)
        store = CellStore(out)
        dices: list[float] = []
        for e, seed in enumerate(spec.seeds):
            cell = CellSpec(seed=seed, k=k, k_label=label, learner=spec.learner)

            def callback(step: int, values: dict, _e: int = e) -> None:
                if on_progress is not None and step % 5 == 0:
                    loss = ", ".join(f"{n} {v:.3f}" for n, v in values.items() if n != "phase")
                    on_progress(
                        f"trial {trial.number} episode {_e + 1}/{spec.episodes}: {values.get('phase')} "
                        f"step {step}{'/' + str(full['steps']) if values.get('phase') != 'pretrain' else ''} ({loss})"
                    )

            record = run_cell(bench, cell, callback=callback)
            store.save(cell, record)
            if record["status"] == "ok" and math.isfinite(float(record["metrics"]["dice"])):
                dice = float(record["metrics"]["dice"])
            else:  # a diverged fit yields no segmenter: it scores what a user would get, nothing
                dice = 0.0
                trial.set_user_attr(f"episode_{e}_failed", str(record.get("reason", "no Dice")))
            dices.append(dice)
            trial.set_user_attr("episode_dice", dices)
            if spec.pruner == "wilcoxon":
                trial.report(dice, step=e)
            else:
                trial.report(float(np.mean(dices)), step=e)
            if e + 1 < spec.episodes and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after episode {e + 1}: running mean Dice {np.mean(dices):.4f}")
        return float(np.mean(dices))

    return objective


def finished_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_study(spec: TuneSpec, study, val_bench, *, console=None, show_progress: bool = True) -> int:
    """Run trials until the study holds ``spec.n_trials`` finished (complete or pruned) trials.

    ``--trials`` counts the whole study, so rerunning the same command after an
    interruption runs only what is missing, and several workers together stop at N (each
    may finish the trial it is in). Returns the number of trials this process ran.
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    remaining = spec.n_trials - finished_count(study)
    if remaining <= 0:
        return 0
    ran = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        disable=not show_progress,
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"tune {spec.study_name}", total=spec.n_trials, completed=spec.n_trials - remaining, detail="")

        def on_progress(text: str) -> None:
            progress.update(task, detail=text)

        def on_trial(study_, trial) -> None:
            nonlocal ran
            ran += 1
            progress.update(task, completed=min(spec.n_trials, finished_count(study_)))
            value = f"val Dice {trial.value:.4f}" if trial.state == TrialState.COMPLETE and trial.value is not None else ""
            eps = " ".join(f"{d:.3f}" for d in trial.user_attrs.get("episode_dice", []))
            msg = f"trial {trial.number} {trial.state.name.lower()} {value} episodes [{eps}] params {trial.params}"
            if console is not None:
                console.log(msg)
            else:
                log.info(msg)

        objective = make_objective(spec, val_bench, on_progress if show_progress else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=spec.timeout,
                callbacks=[MaxTrialsCallback(spec.n_trials, states=states), on_trial],
                gc_after_trial=False,
            )
    return ran


def best_config(spec: TuneSpec, study) -> tuple[dict, str]:
    """The resolved config with ``[learners.NAME]`` = the best trial's values, and ``tuned_from``."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(
            f"study {spec.study_name!r} has no complete trial yet (all pruned, failed or running); run more --trials"
        )
    best = study.best_trial
    params = best.user_attrs.get("learner_params") or {
        **spec.config.get("learners", {}).get(spec.learner, {}), **best.params
    }
    cfg = trial_config(spec.config, spec.learner, params)
    this = f"{spec.study_name} @ {redact(spec.storage)} trial #{best.number} (val Dice {best.value:.4f})"
    others = [
        part for part in str(spec.config.get("tuned_from") or "").split("; ")
        if part and not part.startswith(f"{spec.study_name} @ ")
    ]
    cfg["tuned_from"] = "; ".join([*others, this])
    cfg.setdefault("run", {})
    cfg["run"]["learners"] = spec.learner
    cfg["run"]["shots"] = spec.shots
    cfg["run"]["out"] = str(Path(spec.out) / "benchmark")
    return cfg, this


def write_best(spec: TuneSpec, study, info: dict) -> Path:
    """Write ``OUT/best.toml``: usable as ``ftbench run --config OUT/best.toml``."""
    from fewshot_transfer.harness.store import atomic_write_text

    cfg, this = best_config(spec, study)
    best = study.best_trial
    header = [
        "# Written by `ftbench tune`. Usable as `ftbench run --config THIS_FILE`.",
        f"# Tuned: [learners.{spec.learner}] <- {this}",
        f"# Objective: mean validation Dice over {spec.episodes} episodes (seeds 0..{spec.episodes - 1}) at k={spec.shots},",
        f"#   validation = support-pool patients {', '.join(info['validation'])} (never the test set);",
        f"#   shots drawn from support-pool patients {', '.join(info['tune_support'])}.",
        f"# Per-episode validation Dice of the best trial: {', '.join(f'{d:.4f}' for d in best.user_attrs.get('episode_dice', []))}",
        "# Every other value is the configuration the study ran with (fixed / rule-based settings).",
        "",
    ]
    path = Path(spec.out) / "best.toml"
    atomic_write_text(path, "\n".join(header) + to_toml(cfg))
    return path


def summary_table(study, top: int = 8):
    """A rich table of the best trials (complete first, by value) and the state counts."""
    from optuna.trial import TrialState
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    for t in trials:
        key = t.state.name.lower()
        counts[key] = counts.get(key, 0) + 1
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    table = Table(
        title=f"study {study.study_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v),
        caption="val Dice = mean over episodes of the validation Dice (support-pool validation patients, never the test set)",
    )
    for col in ("#", "state", "val Dice", "episodes", *names):
        table.add_column(col, justify="right" if col not in ("state",) else "left")
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    done.sort(key=lambda t: (t.state != TrialState.COMPLETE, -(t.value if t.value is not None else -1.0)))
    for t in done[:top]:
        eps = t.user_attrs.get("episode_dice", [])
        table.add_row(
            str(t.number),
            t.state.name.lower(),
            f"{t.value:.4f}" if t.state == TrialState.COMPLETE and t.value is not None else "—",
            " ".join(f"{d:.3f}" for d in eps),
            *[_fmt(t.params.get(n)) for n in names],
        )
    return table


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def load_config_text(text: str) -> dict:
    """A config from TOML text (as stored on a study), merged onto the defaults."""
    import tomllib

    return deep_merge(DEFAULTS, tomllib.loads(text))


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (numpy scalars -> float), for Optuna user attributes."""
    return json.loads(json.dumps(obj, default=float))
