"""``ftbench worker`` and ``ftbench grid submit|status|collect``: one grid, many machines.

The shared Optuna RDB storage (``--storage postgresql://...``, or ``sqlite:///...`` for
processes on one machine / a local disk) is the work queue: ``grid submit`` enqueues one
trial per cell, every ``ftbench worker`` claims cells atomically until the queue is empty,
and ``grid collect`` merges the recorded cells into one leaderboard. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fewshot_transfer.commands.run import add_plugin_flag

WORKER_HELP = """\
Run cells of a submitted grid until its queue is empty. Start one per machine (or several
per machine); each claims one cell at a time from --storage, runs it, stores the record in
the storage and in OUT/cells/, and sends heartbeats while it runs. Cells of a worker that
died are re-queued once its heartbeat is older than --grace seconds (checked by the other
workers), so by default a worker whose queue is empty keeps polling while other cells are
still running; --no-wait exits at once.

  ftbench worker --storage postgresql://user:pw@db-host/ftbench --grid quick
"""

GRID_HELP = """\
Execute one `ftbench run` grid on several workers through a shared Optuna storage:

  ftbench grid submit  --storage URL --grid NAME [ftbench run flags]   # once
  ftbench worker       --storage URL --grid NAME                       # on every machine
  ftbench grid status  --storage URL --grid NAME
  ftbench grid collect --storage URL --grid NAME --out DIR             # one leaderboard
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        required=True,
        help="Optuna RDB storage URL shared by all workers (postgresql://... or sqlite:///...)",
    )
    p.add_argument("--grid", required=True, help="grid name (its study is called grid:NAME)")


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser(
        "worker",
        help="run cells of a submitted grid from a shared storage",
        description=WORKER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(w)
    w.add_argument(
        "--out", help="local run directory: cells/, split.json (default runs/grid/NAME); may be shared by workers"
    )
    w.add_argument("--device", help="cpu, cuda or cuda:N on this machine (default: the grid's run.device)")
    w.add_argument(
        "--heartbeat", type=int, default=60, help="seconds between heartbeats of the running cell (default 60)"
    )
    w.add_argument(
        "--grace",
        type=int,
        default=180,
        help="seconds without heartbeat before another worker re-queues a cell (default 180)",
    )
    w.add_argument("--no-wait", action="store_true", help="exit when no cell is waiting, even while others still run")
    w.add_argument("--max-cells", type=int, help="stop after running this many cells")
    w.add_argument(
        "--portable",
        action="store_true",
        help="start with the portable kernel settings (a grid submitted with --portable needs them)",
    )
    w.set_defaults(func=worker_main)

    g = sub.add_parser(
        "grid",
        help="submit a grid to a shared storage, show its status, collect its leaderboard",
        description=GRID_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gsub = g.add_subparsers(dest="grid_command", metavar="SUBCOMMAND", required=True)
    s = gsub.add_parser("submit", help="enqueue every cell of a grid (run flags as in `ftbench run`)")
    _common(s)
    s.add_argument("--shots", help="k values (as in ftbench run); default 1,5,20")
    s.add_argument("--learners", help="comma list of learners, or 'all'")
    s.add_argument("--seeds", help="number of seeds N or a list '0,3,7'")
    s.add_argument("--config", help="TOML config (configs/quick.toml, configs/full.toml, a best.toml ...)")
    s.add_argument("--target", help="target dataset folder (default phantom:covid)")
    s.add_argument("--source", help="source dataset folder (default phantom:cap)")
    s.add_argument("--device", help="default device of the workers (each may override with --device)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    s.add_argument("--out", help="where the submitting machine writes split.json (default runs/grid/NAME)")
    s.add_argument("--retry-failed", action="store_true", help="re-enqueue cells recorded as failed (e.g. diverged)")
    s.add_argument(
        "--portable", action="store_true", help="portable floats (run.portable); start its workers with --portable"
    )
    add_plugin_flag(s)
    add_launch_flags(s)
    s.set_defaults(func=submit_main)
    st = gsub.add_parser("status", help="cells per state")
    _common(st)
    st.set_defaults(func=status_main)
    c = gsub.add_parser("collect", help="write all recorded cells into one run directory and render its leaderboard")
    _common(c)
    c.add_argument("--out", help="run directory to write (default runs/grid/NAME)")
    c.set_defaults(func=collect_main)


def add_launch_flags(p: argparse.ArgumentParser) -> None:
    """``grid submit --launch``: start the workers too, through submitit (the ``cluster`` extra)."""
    g = p.add_argument_group(
        "launching workers (pip install 'fewshot-transfer[cluster]')",
        "after enqueuing, start --workers `ftbench worker` processes: a Slurm job array (one task per worker) "
        "or local processes; each keeps its log in --log-dir",
    )
    g.add_argument("--launch", choices=("slurm", "local"), help="start the workers on Slurm or on this machine")
    g.add_argument("--workers", type=int, default=1, help="how many workers to start (default 1)")
    g.add_argument("--log-dir", help="submitit folder: one log per worker (default OUT/launch)")
    g.add_argument("--heartbeat", type=int, default=60, help="launched workers' heartbeat seconds (default 60)")
    g.add_argument("--grace", type=int, default=180, help="launched workers' grace seconds (default 180)")
    g.add_argument("--slurm-partition", help="Slurm partition")
    g.add_argument(
        "--slurm-time", type=int, default=1440, help="minutes per worker (default 1440; also the local time limit)"
    )
    g.add_argument("--slurm-gpus-per-worker", type=int, default=1, help="GPUs per worker (default 1; 0 = CPU only)")
    g.add_argument("--slurm-cpus", type=int, help="CPUs per worker (--cpus-per-task)")
    g.add_argument("--slurm-mem", help="memory per worker, as sbatch --mem takes it (e.g. 16G)")
    g.add_argument("--slurm-account", help="Slurm account")
    g.add_argument("--slurm-qos", help="Slurm quality of service")
    g.add_argument("--slurm-constraint", help="Slurm node constraint")
    g.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before each worker (repeatable), e.g. 'source /path/.venv/bin/activate'",
    )
    g.add_argument("--slurm-parallelism", type=int, help="array tasks running at once (default: all)")
    g.add_argument("--local-gpus", help="--launch local on GPUs: comma list of GPU indices the workers take in turn")


def _launch(args: argparse.Namespace, out: Path, console) -> int:
    """Start the workers ``--launch`` asks for; wait for local ones, return at once on Slurm."""
    from fewshot_transfer.tuning.cluster import SlurmOptions, WorkerJob, launch, wait_all
    from fewshot_transfer.tuning.storage import redact

    folder = Path(args.log_dir) if args.log_dir else out / "launch"
    job = WorkerJob(
        storage=args.storage,
        grid=args.grid,
        out=str(out.resolve()),
        device=args.device,
        heartbeat=args.heartbeat,
        grace=args.grace,
    )
    options = SlurmOptions(
        partition=args.slurm_partition,
        time_min=args.slurm_time,
        gpus_per_worker=args.slurm_gpus_per_worker,
        cpus=args.slurm_cpus,
        mem=args.slurm_mem,
        account=args.slurm_account,
        qos=args.slurm_qos,
        constraint=args.slurm_constraint,
        setup=tuple(args.slurm_setup),
        parallelism=args.slurm_parallelism,
    )
    gpus = [int(g) for g in args.local_gpus.split(",") if g.strip()] if args.local_gpus else None
    jobs = launch(
        args.launch, job, args.workers, folder, slurm=options, local_gpus=gpus, job_name=f"ftbench-{args.grid}"
    )
    for j in jobs:
        console.print(f"worker job {j.job_id}: log {j.paths.stdout}")
    watch = f"ftbench grid status --storage {redact(args.storage)} --grid {args.grid}"
    if args.launch == "slurm":
        console.print(
            f"submitted {len(jobs)} workers to Slurm; watch with `{watch}` (or optuna-dashboard), then "
            f"`ftbench grid collect --storage {redact(args.storage)} --grid {args.grid} --out DIR`"
        )
        return 0
    died = 0
    for j, counts, error in wait_all(jobs):
        if counts is None:
            died += 1
            console.print(f"[yellow]worker job {j.job_id} did not finish ({error}); log {j.paths.stderr}[/yellow]")
        else:
            console.print(
                f"worker job {j.job_id}: {counts['ok']} cells ok, {counts['failed']} failed, {counts['error']} errors"
            )
    console.print(f"local workers done; `{watch}`")
    return 1 if died else 0


def _out(args: argparse.Namespace) -> Path:
    return Path(args.out) if getattr(args, "out", None) else Path("runs") / "grid" / args.grid


def _storage(args: argparse.Namespace, heartbeat: int | None = 60, grace: int | None = 180):
    from fewshot_transfer.tuning.storage import make_storage

    return make_storage(args.storage, heartbeat=heartbeat, grace=grace)


def submit_main(args: argparse.Namespace) -> int:
    import optuna
    from rich.console import Console

    from fewshot_transfer.commands.run import build_config
    from fewshot_transfer.harness.rundir import open_run
    from fewshot_transfer.harness.runner import plan_cells
    from fewshot_transfer.tuning.distributed import submit
    from fewshot_transfer.tuning.storage import redact

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = _out(args)
    args.out = str(out)
    cfg = build_config(args)
    bench = open_run(cfg, out, check=False, write_config=False)  # plans the cells; workers write config.toml
    names, seeds = bench.plan.run.learners, bench.plan.run.seeds
    cells = plan_cells(bench, names, seeds)
    result = submit(_storage(args), args.grid, cfg, bench, cells, retry_failed=args.retry_failed)
    Console().print(
        f"grid [bold]{args.grid}[/bold] in {redact(args.storage)}: {len(cells)} cells "
        f"({len(names)} learners x k={','.join(lab for lab, _ in bench.shots)} x {len(seeds)} seeds); "
        f"enqueued {result['enqueued']}, already queued/done {result['skipped']}"
        + (
            ""
            if args.launch
            else f"\nstart workers with: ftbench worker --storage {redact(args.storage)} --grid {args.grid}"
        )
    )
    if args.launch:
        return _launch(args, out, Console())
    return 0


def worker_main(args: argparse.Namespace) -> int:
    if args.portable:
        from fewshot_transfer import portable

        portable.enter(restart=args.restartable)  # before torch: the grid's own config is read later
    import optuna
    from rich.console import Console

    from fewshot_transfer.tuning.distributed import work

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console()
    counts = work(
        _storage(args, args.heartbeat, args.grace),
        args.grid,
        _out(args),
        device=args.device,
        wait=not args.no_wait,
        max_cells=args.max_cells,
        console=console,
    )
    console.print(
        f"worker done: {counts['ok']} cells ok, {counts['failed']} failed (recorded), {counts['error']} errors, "
        f"{counts['reused']} reused from {_out(args) / 'cells'}, in {counts['seconds']} s"
    )
    return 1 if counts["error"] else 0


def status_main(args: argparse.Namespace) -> int:
    import optuna
    from rich.console import Console

    from fewshot_transfer.tuning.distributed import load_grid, status

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, _, _ = load_grid(_storage(args), args.grid)
    by_state = status(study)
    total = sum(len(v) for v in by_state.values())
    console = Console()
    console.print(
        f"grid {args.grid}: {total} cells; " + ", ".join(f"{len(v)} {k}" for k, v in sorted(by_state.items()))
    )
    for state in ("running", "error", "failed"):
        if by_state.get(state):
            console.print(f"  {state}: {', '.join(by_state[state])}")
    return 0


def collect_main(args: argparse.Namespace) -> int:
    import optuna
    from rich.console import Console

    from fewshot_transfer.tuning.distributed import collect

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console()
    result = collect(_storage(args), args.grid, _out(args), console=console)
    console.print(f"collected {result['written']} of {result['total']} cells into {_out(args)}")
    if not result["written"]:
        raise RuntimeError(f"grid {args.grid!r} has no finished cell yet; run `ftbench worker` first")
    return 0
