"""Start the workers of a submitted grid through submitit: a Slurm job array, or local processes.

Each worker is :func:`fewshot_transfer.tuning.distributed.work` in its own process (a
picklable :class:`WorkerJob`), so everything a worker does by hand (atomic claims, heartbeats,
re-queueing the cell of a dead worker) holds unchanged; submitit only starts the processes
and keeps one log per worker in its folder. On Slurm the N workers are one job array, one
GPU per array task by default. ``submitit`` is the optional ``cluster`` extra.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class WorkerJob:
    """One ``ftbench worker``: claims cells of ``grid`` from ``storage`` until none is left."""

    storage: str
    grid: str
    out: str
    device: str | None = None
    heartbeat: int = 60
    grace: int = 180

    def __call__(self, index: int = 0) -> dict:
        import optuna

        from fewshot_transfer.tuning.distributed import work
        from fewshot_transfer.tuning.storage import make_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        log.info("worker %d of grid %s, cells into %s", index, self.grid, self.out)
        storage = make_storage(self.storage, heartbeat=self.heartbeat, grace=self.grace)
        return work(storage, self.grid, Path(self.out), device=self.device)


@dataclass(frozen=True)
class SlurmOptions:
    """What each array task (one worker) asks Slurm for."""

    partition: str | None = None
    time_min: int = 1440
    gpus_per_worker: int = 1
    cpus: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = field(default_factory=tuple)
    parallelism: int | None = None


def _submitit():
    try:
        import submitit
    except ImportError:
        raise RuntimeError(
            "--launch needs submitit: pip install 'fewshot-transfer[cluster]' (or pip install submitit)"
        ) from None
    return submitit


def slurm_executor(folder: Path, workers: int, options: SlurmOptions, job_name: str):
    """A submitit ``SlurmExecutor`` for ``workers`` array tasks (``sbatch`` must be on PATH)."""
    submitit = _submitit()
    executor = submitit.SlurmExecutor(folder=str(folder))
    params = {
        "job_name": job_name,
        "time": int(options.time_min),
        "ntasks_per_node": 1,
        "array_parallelism": int(options.parallelism or workers),
        "partition": options.partition,
        "gpus_per_node": int(options.gpus_per_worker) or None,
        "cpus_per_task": options.cpus,
        "mem": options.mem,
        "account": options.account,
        "qos": options.qos,
        "constraint": options.constraint,
        "setup": list(options.setup) or None,
    }
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def launch(
    kind: str,
    job: WorkerJob,
    workers: int,
    folder: Path,
    *,
    slurm: SlurmOptions | None = None,
    local_gpus: list[int] | None = None,
    job_name: str = "ftbench-worker",
) -> list:
    """Start ``workers`` copies of ``job``; returns their submitit jobs (logs in ``folder``)."""
    if kind not in LAUNCHERS:
        raise ValueError(f"--launch {kind!r}: use one of {', '.join(LAUNCHERS)}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    folder = Path(folder).resolve()
    if kind == "slurm":
        executor = slurm_executor(folder, workers, slurm or SlurmOptions(), job_name)
        if workers == 1:
            return [executor.submit(job, 0)]
        return executor.map_array(job, list(range(workers)))
    submitit = _submitit()
    if job.device and job.device.startswith("cuda") and not local_gpus:
        raise ValueError("--launch local with a cuda device: name the GPUs the workers share with --local-gpus 0,1,...")
    timeout = (slurm or SlurmOptions()).time_min
    jobs = []
    for i in range(workers):
        executor = submitit.LocalExecutor(folder=str(folder))
        gpus = {"gpus_per_node": 1, "visible_gpus": (local_gpus[i % len(local_gpus)],)} if local_gpus else {}
        executor.update_parameters(timeout_min=timeout, **gpus)
        jobs.append(executor.submit(job, i))
    return jobs


def wait_all(jobs: list) -> list[tuple[object, dict | None, str]]:
    """Wait for every job: ``(job, counts or None, error)`` each; a worker that died is reported,
    not raised, since the others re-queue its cell and finish the grid."""
    out = []
    for job in jobs:
        try:
            out.append((job, job.result(), ""))
        except Exception as exc:  # killed, or raised: its log says why
            out.append(
                (job, None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
            )
    return out
