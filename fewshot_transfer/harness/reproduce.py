"""The command that recomputes cells, kept free of torch so reports can print it."""

from __future__ import annotations

import shlex
from pathlib import Path


def seeds_arg(seeds: list[int]) -> str:
    """The ``--seeds`` value selecting exactly ``seeds`` (a count when they are 0..n-1)."""
    seeds = sorted(seeds)
    if seeds == list(range(len(seeds))):
        return str(len(seeds))
    return ",".join(map(str, seeds)) + ("," if len(seeds) == 1 else "")


def reproduce_command(
    run_dir: Path | str, learner: str, shots: str, seeds: list[int], threads: int | None = None
) -> str:
    """One command that recomputes these cells (the leaderboard shows it per row).

    CPU results are bit-identical only at the same torch thread count (reductions change
    order), so the command pins the thread count the cells ran with when it is known.
    """
    pin = f" --set run.threads={threads}" if threads else ""
    return (
        f"ftbench run --config {shlex.quote(str(Path(run_dir) / 'config.toml'))} --learners {learner} "
        f"--shots {shlex.quote(shots if shots != 'any' else '0')} --seeds {seeds_arg(seeds)}{pin} --out {shlex.quote(str(run_dir))}"
    )
