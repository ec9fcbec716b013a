"""Phantom generation speed: slices per second per domain, against the 200 slices/s target.

One process, one core: BLAS is pinned to a single thread before numpy is imported (the
texture fields use small matrix products). Each case generates ``--patients`` patients
of ``--slices`` slices and keeps the best of ``--repeats`` runs. Wall time is the number
the target is about; CPU time is printed next to it because on a shared, busy machine
wall time also measures the neighbours (the load average is printed for that reason).

    python benchmarks/bench_phantom.py [--size 128] [--patients 20] [--slices 12] [--repeats 3]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

from fewshot_transfer.data.phantom import DOMAINS, generate_volumes  # noqa: E402

TARGET_SLICES_PER_S = 200.0


def time_case(domain: str, size: int, patients: int, slices: int, repeats: int) -> tuple[float, float]:
    """Best (wall, cpu) seconds to generate ``patients`` x ``slices`` slices."""
    generate_volumes(domain, 1, size=size, n_slices=slices)  # warm caches and imports
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        generate_volumes(domain, patients, size=size, n_slices=slices)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, action="append", help="image size in px (repeatable; default 128 and 64)")
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = args.size or [128, 64]

    n = args.patients * args.slices
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"phantom generation, {args.patients} patients x {args.slices} slices = {n} slices per case, "
        f"best of {args.repeats}; 1 BLAS thread; load average {load:.1f} on {os.cpu_count()} CPUs"
    )
    header = ("domain", "size", "wall s", "slices/s", "x target", "cpu slices/s", "x target")
    print("{:<7} {:>5} {:>8} {:>9} {:>9} {:>13} {:>9}".format(*header))
    for size in sizes:
        for domain in DOMAINS:
            wall, cpu = time_case(domain, size, args.patients, args.slices, args.repeats)
            print(
                f"{domain:<7} {size:>5} {wall:>8.3f} {n / wall:>9.0f} {n / wall / TARGET_SLICES_PER_S:>8.2f}x "
                f"{n / cpu:>13.0f} {n / cpu / TARGET_SLICES_PER_S:>8.2f}x"
            )
    print(f"target: {TARGET_SLICES_PER_S:.0f} slices/s at 128 px on one core")


if __name__ == "__main__":
    main()
