"""Optuna storage for studies and grids: URL handling, heartbeats, retry of dead trials.

Any SQLAlchemy URL Optuna's :class:`~optuna.storages.RDBStorage` accepts (default
``sqlite:///OUT/study.db``). Heartbeats mark a trial whose process died as failed after the
grace period and a retry callback re-queues it with the same parameters. On SQLite every
transaction starts with ``BEGIN IMMEDIATE`` (see :func:`make_storage`) so claiming a queued
trial is atomic there too.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Seconds between heartbeats of a running trial, and silence after which it counts as dead.
DEFAULT_HEARTBEAT = 60
DEFAULT_GRACE = 180
#: How often a trial whose worker died is re-queued.
DEFAULT_MAX_RETRY = 2


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

    kwargs: dict[str, Any] = {"heartbeat_interval": heartbeat or None, "grace_period": grace if heartbeat else None}
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
    must, or a live cell would be declared dead after the grace period. The first beat is
    recorded before the block starts: Optuna only fails RUNNING trials that have a beat, so a
    worker killed between claiming a cell and its first beat leaves the cell running for good;
    beating at once shrinks that window to the claim's own milliseconds.
    """
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    stop = threading.Event()

    def record() -> None:
        try:
            storage.record_heartbeat(trial_id)
        except Exception as exc:  # a missed beat is not fatal; the grace period covers a few
            log.warning("heartbeat for trial id %d failed: %s", trial_id, exc)

    def beat() -> None:
        while not stop.wait(interval):
            record()

    record()

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (numpy scalars -> float), for Optuna user attributes."""
    return json.loads(json.dumps(obj, default=float))
