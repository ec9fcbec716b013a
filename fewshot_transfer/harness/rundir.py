"""Opening a run directory: the one place every command and worker starts a run.

A run directory holds one benchmark configuration; resuming into it with another is refused,
and a path that cannot be a run directory is refused with what to do, before any data loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.config import load_toml, run_identity, to_toml

if TYPE_CHECKING:
    from fewshot_transfer.harness.benchmark import Benchmark
    from fewshot_transfer.plan import RunPlan


def check_out_path(out: Path) -> None:
    """Refuse an ``--out`` that is not (and cannot become) a run directory.

    Without this, an existing file named like the run, or a ``cells`` / ``config.toml`` of the
    wrong kind inside it, ends in a ``FileExistsError`` traceback halfway through the first cell.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a run directory: choose a folder (new or an earlier run's)")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {out} lies under {parent}, which is a file: choose a folder elsewhere")
    for name, want_dir in (("cells", True), ("config.toml", False), ("split.json", False)):
        path = out / name
        if path.exists() and path.is_dir() != want_dir:
            kind = "a folder" if want_dir else "a file"
            raise ValueError(
                f"{path} is not {kind}, so {out} is no run directory ftbench wrote: "
                "use another --out, or delete that directory to start over"
            )


def check_run_dir(out: Path, cfg: dict) -> None:
    """Refuse a path that cannot hold a run, and resuming into a run dir whose identity
    sections differ (results would mix)."""
    check_out_path(out)
    saved = Path(out) / "config.toml"
    if not saved.is_file():
        return
    old = run_identity(load_toml(saved))
    new = run_identity(cfg)
    if old != new:
        diff = sorted(
            f"{sec}.{key}"
            for sec in set(old) | set(new)
            for key in set(old.get(sec, {})) | set(new.get(sec, {}))
            if old.get(sec, {}).get(key) != new.get(sec, {}).get(key)
        )
        raise ValueError(
            f"{out} already holds a run with a different configuration ({', '.join(diff)} differ); "
            "use another --out, or delete that directory to start over"
        )


def open_run(
    cfg: dict,
    out: Path,
    *,
    device: str | None = None,
    threads: int | None = None,
    check: bool = True,
    write_config: bool = True,
    strict_controls: bool = False,
) -> Benchmark:
    """Resolve ``cfg`` into the run's plan once and prepare its benchmark in ``out``.

    The plan (:func:`~fewshot_transfer.harness.planning.run_plan`) holds an entry for every
    row of the grid: the run's learners and the control rows ``run.controls`` adds
    (``strict_controls``: the user named them, so an unknown one is an error). With
    ``write_config`` the resolved ``config.toml`` and the plan (``plan.json``) are written
    (a tuning folder or a worker of another's run skips it).
    """
    from fewshot_transfer.harness.planning import PLAN_FILE, grid_rows, run_plan, with_cells

    plan = run_plan(cfg)
    out = Path(out)
    if check:
        check_run_dir(out, cfg)
    bench = open_plan(plan, out, device=device, threads=threads, check=not check)
    names, controls = grid_rows(plan, bench.shots, strict_controls)
    bench.plan = with_cells(plan, [*names, *controls], bench.shots)
    bench.controls = controls
    if write_config:
        atomic_write_text(out / "config.toml", to_toml(cfg))
        atomic_write_text(out / PLAN_FILE, bench.plan.to_json())
    return bench


def open_plan(
    plan: RunPlan, out: Path, *, device: str | None = None, threads: int | None = None, check: bool = True
) -> Benchmark:
    """Set up this process for ``plan``'s cells and prepare its benchmark in ``out``.

    In this order, the same in every command and worker process (so a cell's floats do not
    depend on which one ran it): torch's thread count (``threads``, else ``run.threads``;
    0 = torch's default), portable kernels (``run.portable``: the pinned variables must have
    come with the process), the run's plugins, the output-path check (``check``), and the data
    and split (:func:`~fewshot_transfer.harness.benchmark.prepare`).
    """
    import torch

    from fewshot_transfer import learners
    from fewshot_transfer.harness.benchmark import prepare

    n = plan.run.threads if threads is None else int(threads)
    if n > 0:
        torch.set_num_threads(n)
    if plan.run.portable:
        from fewshot_transfer.portable import activate

        activate()
    learners.load_plugins(plan.run.plugins)
    out = Path(out)
    if check:
        check_out_path(out)
    return prepare(plan, out, device=device)
