"""Cells side by side: worker processes that each run whole cells, single-threaded.

Why processes and not threads: a cell is a small U-Net whose steps are too short to use
two cores well (intra-op threading of 8-channel convolutions mostly synchronizes), while
independent cells scale with the cores. Each worker builds the :class:`Benchmark` once
(the dataset and split come from the caches the parent filled), pulls cells from one
queue in order, saves every finished cell itself (atomically, as a single process does)
and tells the parent, which keeps the one progress display. Workers share the model cache
through its per-entry lock, so a source model that several cells need is trained once.

Workers are started by ``forkserver`` (``spawn`` where unavailable), never ``fork``: a
forked child of a process that has already run torch (or touched CUDA) can deadlock.

No orphans: a worker's OS parent is the fork server, not the run, and the fork server
stays alive while any worker holds its liveness pipe, so an OS parent-death signal
(PR_SET_PDEATHSIG, used here before) never fires when the run itself is killed (seen:
a SIGTERMed run whose two workers went on computing cells for 48 minutes). Each worker
therefore watches the run's own process through multiprocessing's parent sentinel and
stops when it is gone, and the run turns a SIGTERM into the same orderly stop as Ctrl-C.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from fewshot_transfer.harness.store import CellSpec
from fewshot_transfer.plan import RunPlan

log = logging.getLogger(__name__)

#: What a worker reports: ("start" | "done" | "error", cell, payload).
Event = tuple[str, CellSpec, object]


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's arithmetic units)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            name = name.strip()
            if name == "physical id":
                phys = value.strip()
            elif name == "core id":
                core = value.strip()
            elif not name:
                if core:
                    cores.add((phys, core))
                phys = core = ""
        if core:
            cores.add((phys, core))
    except OSError:
        pass
    return max(1, min(usable, len(cores))) if cores else max(1, usable)


def resolve_jobs(jobs: int, n_cells: int | None = None) -> int:
    """``0`` = one worker per physical core; never more workers than cells."""
    n = int(jobs) if int(jobs) > 0 else physical_cores()
    return max(1, min(n, n_cells)) if n_cells is not None else n


def producers_first(cells: Iterable[CellSpec]) -> list[CellSpec]:
    """Each learner's first cell of every seed, learner-major, then the rest in plan order.

    A learner's first cell of a seed is the one that trains what its later k reuse (the
    seed's source model, its meta-training). Going learner-major over those puts different
    seeds' producers side by side instead of workers queueing behind one seed's lock.
    """
    cells = list(cells)
    heads: dict[tuple[str, int], CellSpec] = {}
    for c in cells:
        heads.setdefault((c.learner, c.seed), c)
    learner_order = list(dict.fromkeys(c.learner for c in cells))
    first = sorted(heads.values(), key=lambda c: (learner_order.index(c.learner), c.seed))
    chosen = set(first)
    return first + [c for c in cells if c not in chosen]


#: What runs one cell in a worker: ``run_cell(bench, spec) -> record`` (the runner passes its own;
#: taking it as an argument keeps this module below the runner, without an import circle).
CellFn = Callable[..., dict]


def run_parallel(
    plan: RunPlan,
    out_dir: Path,
    cells: list[CellSpec],
    *,
    run_cell: CellFn,
    jobs: int,
    device: str,
    threads: int = 1,
    on_event: Callable[[str, CellSpec, object], None],
) -> None:
    """Run ``cells`` in ``jobs`` worker processes; ``on_event`` sees every start and finish.

    ``run_cell`` must be a module-level function (it is pickled by name into the workers).

    Returns when every cell is saved. Any exit before that (Ctrl-C, a worker that raised or
    died) terminates all workers first; cells they finished are already on disk.
    """
    ctx = _context()
    tasks = ctx.Queue()
    tasks.cancel_join_thread()  # unread cells left in the pipe must not block our exit
    events = ctx.Queue()
    for spec in cells:
        tasks.put(spec)
    for _ in range(jobs):
        tasks.put(None)
    procs = [
        ctx.Process(
            target=_worker,
            args=(plan, str(out_dir), run_cell, device, threads, dict(os.environ), tasks, events),
            name=f"ftbench-worker-{i}",
            daemon=True,
        )
        for i in range(jobs)
    ]
    restore = _stop_on_sigterm()
    try:
        for p in procs:
            p.start()
        remaining = len(cells)
        while remaining:
            try:
                kind, spec, payload = events.get(timeout=0.5)
            except queue.Empty:
                _check_workers(procs)
                continue
            if kind == "error":
                raise RuntimeError(f"cell {spec.cell_id} raised in a worker process:\n{payload}")
            on_event(kind, spec, payload)
            if kind == "done":
                remaining -= 1
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join()
        restore()


def _stop_on_sigterm() -> Callable[[], None]:
    """While workers run, SIGTERM (``kill``, a batch scheduler) unwinds like Ctrl-C, so the
    ``finally`` above terminates them; returns the function that restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _exit_on_term)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _context() -> mp.context.BaseContext:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Workers then fork from a server that has imported torch once, instead of each
        # importing it again (seconds per worker on a busy 2-core box). torch._dynamo is
        # what the first optimizer constructor imports (~1-5 s here).
        ctx.set_forkserver_preload(["torch._dynamo", "fewshot_transfer.harness.runner"])
        return ctx
    return mp.get_context("spawn")


def _check_workers(procs: list) -> None:
    dead = [p for p in procs if p.exitcode not in (None, 0)]
    if dead:
        raise RuntimeError(f"worker {dead[0].name} died (exit code {dead[0].exitcode}); rerun to resume")
    if all(p.exitcode == 0 for p in procs):
        raise RuntimeError("all workers exited with cells left unfinished; rerun to resume")


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds atomic writes, so no temp file is left behind


def _stop_when_run_dies() -> None:
    """Stop this worker (via its SIGTERM handler) once the process that started it is gone,
    however it went: SIGKILL, OOM killer, a crash; the same under forkserver and spawn, on
    every OS. See the module docstring for why an OS parent-death signal does not do this."""
    run = mp.parent_process()
    if run is None:
        return

    def watch() -> None:
        run.join()  # returns when the run's end of the sentinel pipe closes
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="ftbench-run-watch", daemon=True).start()


def _worker(
    plan: RunPlan, out_dir: str, run_cell: CellFn, device: str, threads: int, env: dict[str, str], tasks, events
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # A forkserver child inherits the server's environment, which may be older than the
    # parent's (FTBENCH_CACHE set after the server started must still reach the worker).
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGTERM, _exit_on_term)
    _stop_when_run_dies()

    from fewshot_transfer.harness.rundir import open_plan
    from fewshot_transfer.harness.store import CellStore

    # run.portable: the pinned variables came with the process (the run set them before it
    # started the fork server); open_plan switches oneDNN and NNPACK off here, or raises.
    # The plan comes resolved, cell entries included: a worker resolves nothing again.
    bench = open_plan(plan, Path(out_dir), device=device, threads=threads)
    store = CellStore(bench.out_dir)
    while (spec := tasks.get()) is not None:
        events.put(("start", spec, None))
        try:
            hits, misses = bench.cache.hits, bench.cache.misses
            bench.cache.begin_cell()
            record = run_cell(bench, spec)
            store.save(spec, record)
        except Exception:
            events.put(("error", spec, traceback.format_exc()))
            return
        events.put(("done", spec, {"record": record, "cache": (bench.cache.hits - hits, bench.cache.misses - misses)}))
