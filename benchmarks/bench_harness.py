"""Harness speed: train-step efficiency, harness overhead, and the default run's wall time.

    python benchmarks/bench_harness.py            # (a) + (b) + (c), about 5 minutes on 2 cores
    python benchmarks/bench_harness.py --skip-run # (a) only

(a) GFLOP/s of one U-Net train step (base 16, 4 levels, GroupNorm, batch 8, 64x64; FLOPs
    counted by torch.utils.flop_counter) as a fraction of float32 2048x2048 matmul GFLOP/s
    measured in the same process.
(b) harness efficiency = time inside learner training / wall time of `ftbench run`
    (sampling, evaluation, logging, I/O must not dominate; target >= 0.8).
(c) cold wall time of `ftbench run --shots 1,5,20` with the four baselines (target <= 300 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fewshot_transfer.augment import AugmentConfig, augment_batch
from fewshot_transfer.losses import seg_loss
from fewshot_transfer.models import UNet


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def train_step_gflops(batch: int = 8, size: int = 64, repeats: int = 20) -> tuple[float, float]:
    """(GFLOP/s, seconds per step) of forward + backward + Adam on the default backbone."""
    torch.manual_seed(0)
    model = UNet(base=16, depth=4)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(batch, 1, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.95).float()
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        xa, ya = augment_batch(x, y, AugmentConfig(), gen)
        loss = seg_loss(model(xa), ya)
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    dt = (time.perf_counter() - t) / repeats
    return flops / dt / 1e9, dt


def default_run(out: Path) -> dict:
    """Cold wall time of the default command with the four baselines; training time from the cells.

    Cold = what a fresh machine sees: an empty ``FTBENCH_CACHE``, so the phantom is generated
    and exported and the source models are pretrained inside the measured time.
    """
    cmd = [sys.executable, "-m", "fewshot_transfer.cli", "run", "--shots", "1,5,20",
           "--learners", "scratch,source-only,finetune,joint", "--out", str(out), "--no-progress"]
    env = {**os.environ, "FTBENCH_CACHE": str(out / "ftbench-cache")}
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t
    train = sum(json.loads(p.read_text())["timing"]["train_s"] for p in (out / "cells").glob("*.json"))
    shutil.rmtree(out / "ftbench-cache", ignore_errors=True)
    return {"wall_s": wall, "train_s": train}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-run", action="store_true", help="only (a)")
    ap.add_argument("--keep", help="keep the run directory here instead of a temp dir")
    args = ap.parse_args()
    if args.keep and Path(args.keep).exists():
        ap.error(f"--keep {args.keep} exists; give a new directory (the benchmark never deletes one it did not create)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    mm = matmul_gflops()
    step_gf, step_s = train_step_gflops()
    print(f"(a) matmul 2048^2 fp32: {mm:.1f} GFLOP/s; U-Net train step (b16, d4, batch 8, 64px): "
          f"{step_s * 1000:.1f} ms = {step_gf:.1f} GFLOP/s = {step_gf / mm:.2f} of matmul")
    if args.skip_run:
        return 0
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ftbench-bench-"))
    try:
        res = default_run(tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"(b) harness efficiency: training {res['train_s']:.1f} s / wall {res['wall_s']:.1f} s = "
          f"{res['train_s'] / res['wall_s']:.2f} (target >= 0.8; wall includes phantom generation, pretraining counts as training)")
    print(f"(c) default `ftbench run --shots 1,5,20` with the four baselines: {res['wall_s']:.1f} s "
          f"= {res['wall_s'] / 300:.2f} of the 300 s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
