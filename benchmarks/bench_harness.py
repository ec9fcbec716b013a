"""Harness speed: step efficiency, cells side by side, the default run against its FLOP bound.

    python benchmarks/bench_harness.py                 # everything, ~15 min on an idle 2-core box
    python benchmarks/bench_harness.py --skip-default  # (a) + (b) only, ~5 min
    python benchmarks/bench_harness.py --skip-run      # (a) only

(a) Single-thread float32 2048x2048 matmul GFLOP/s (the peak used below) and one train step
    of the quick-profile U-Net (config defaults: base 8, depth 4, GroupNorm, batch 8, 64x64),
    FLOPs counted by torch.utils.flop_counter, as a fraction of that peak.
(b) Jobs speed-up on the same 12 scratch/finetune cells (k = 1, 5, 20 x 2 seeds, cold model
    cache, phantom data already cached): 1 process x 1 thread, `--jobs 2` (1 thread each),
    and 1 process x 2 intra-op threads; harness efficiency with jobs > 1 = time inside
    learner steps / (jobs x wall).
(c) The default run (`ftbench run`: the default learner set, k = 0, 1, 5, 20, 3 seeds, default jobs) on
    a representative subset, `--subset-seeds` seeds (default 1), cold model cache, wall
    scaled by seeds / subset-seeds (cells and pretrainings are per seed).
(d) The FLOPs the default run counts -- one counted train step x steps, summed over the
    grid's cells, source pretrainings and meta-training (one step per inner/outer update;
    second-order terms and discriminators not counted, so a lower bound) plus one forward
    of the test set per cell -- and the wall time that takes at the single-thread matmul
    peak on every physical core, next to (c)'s wall time.
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
from fewshot_transfer.config import DEFAULTS
from fewshot_transfer.losses import seg_loss
from fewshot_transfer.models.unet import build_unet

CELLS_12 = ["--learners", "scratch,finetune", "--shots", "1,5,20", "--seeds", "2"]


def matmul_gflops(n: int = 2048, repeats: int = 10) -> tuple[float, float]:
    """(per wall second, per CPU second): on a shared box the CPU-time rate is the machine's."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t, c = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        a @ b
    flops = 2 * n**3 * repeats / 1e9
    return flops / (time.perf_counter() - t), flops / (time.process_time() - c)


def train_step(model_cfg: dict, batch: int, size: int, repeats: int = 20) -> tuple[float, float, float]:
    """(FLOPs, wall seconds, CPU seconds) of forward + backward + Adam of the configured backbone."""
    torch.manual_seed(0)
    model = build_unet(model_cfg)
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
    for _ in range(3):
        step()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        step()
    return counter.get_total_flops(), (time.perf_counter() - t) / repeats, (time.process_time() - c) / repeats


def forward_flops(model_cfg: dict, rows: int, size: int) -> int:
    model = build_unet(model_cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(rows, 1, size, size))
    return counter.get_total_flops()


def ftbench(args: list[str], out: Path, cache: Path) -> dict:
    """Wall time of one `ftbench run` and the training seconds its cells record."""
    cmd = [sys.executable, "-m", "fewshot_transfer.cli", "run", *args, "--out", str(out), "--no-progress"]
    env = {**os.environ, "FTBENCH_CACHE": str(cache)}
    cpu0 = os.times()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t
    cpu1 = os.times()
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    return {
        "wall_s": wall,
        "cpu_s": (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system),
        "train_s": sum(c["timing"]["train_s"] for c in cells),
        "cells": len(cells),
    }


def cold_cache(tmp: Path, name: str, datasets: Path) -> Path:
    """A model cache with no models but the phantom data already decoded (shared setup)."""
    cache = tmp / f"cache-{name}"
    shutil.copytree(datasets, cache / "datasets")
    return cache


def default_grid_flops(step_flops: int, cfg: dict, size: int) -> tuple[float, int]:
    """(FLOPs, cells) the default grid counts; see (d) in the module docstring."""
    from fewshot_transfer import learners
    from fewshot_transfer.harness.planning import resolve_learners

    seeds = int(cfg["run"]["seeds"])
    shots = [s.strip() for s in str(cfg["run"]["shots"]).split(",")]
    test_rows = round(int(cfg["data"]["phantom"]["target_patients"]) * float(cfg["data"]["split"]["test"])) * int(
        cfg["data"]["phantom"]["slices_per_patient"]
    )
    steps = 0
    cells = 0
    for name in resolve_learners(cfg["run"]["learners"]):  # the default learner set, not every learner
        cls = learners.get(name)
        params = cls.resolve_params(cfg)
        k0 = "0" in shots and not cls.supports_k0  # needs labels: an n/a row at k = 0, no cell
        per_seed_cells = 1 if cls.k_independent else len(shots) - int(k0)
        # The common budget: test-time adaptation is `steps` (`test_steps` only in maml-fewstep,
        # the one learner whose fit adapts with the few-step variant).
        fewstep = name == "maml-fewstep"
        cell_steps = int(params["test_steps"] if fewstep else params.get("steps", 0)) if cls.uses_target else 0
        steps += seeds * per_seed_cells * cell_steps
        if "meta_steps" in params:
            steps += seeds * int(params["meta_steps"]) * int(params["meta_batch"]) * (int(params["inner_steps"]) + 1)
        cells += seeds * per_seed_cells
    steps += seeds * int(cfg["train"]["pretrain_steps"])
    flops = steps * step_flops + cells * forward_flops(cfg["model"], test_rows, size)
    return float(flops), cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-run", action="store_true", help="only (a)")
    ap.add_argument("--skip-default", action="store_true", help="(a), (b) and (d) without the default run")
    ap.add_argument("--subset-seeds", type=int, default=1, help="seeds of the default run actually run in (c)")
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="run (b) and (c) with this fraction of train.steps and train.pretrain_steps (a busy box)",
    )
    ap.add_argument("--keep", help="keep the run directories here instead of a temp dir")
    args = ap.parse_args()
    if args.keep and Path(args.keep).exists():
        ap.error(f"--keep {args.keep} exists; give a new directory (the benchmark never deletes one it did not create)")
    from fewshot_transfer.harness.parallel import physical_cores

    cores = physical_cores()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical / {cores} physical cores, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} (start)"
    )
    torch.set_num_threads(1)
    cfg = DEFAULTS
    size, batch = int(cfg["data"]["size"]), int(cfg["train"]["batch_size"])
    peak_wall, peak = matmul_gflops()
    step_flops, step_s, step_cpu = train_step(cfg["model"], batch, size)
    print(
        f"(a) matmul 2048^2 fp32, 1 thread: {peak:.1f} GFLOP/s per CPU second ({peak_wall:.1f} per wall second); "
        f"quick-profile train step (base {cfg['model']['base']}, depth {cfg['model']['depth']}, batch {batch}, {size}px, "
        f"1 thread): {step_flops / 1e6:.1f} MFLOP in {step_cpu * 1000:.1f} ms CPU ({step_s * 1000:.1f} ms wall) = "
        f"{step_flops / step_cpu / 1e9:.2f} GFLOP/s per CPU second = {step_flops / step_cpu / 1e9 / peak:.3f} of matmul"
    )
    flops, n_cells = default_grid_flops(step_flops, cfg, size)
    bound = flops / (peak * 1e9 * cores)
    print(
        f"(d) default grid: {n_cells} cells, {flops / 1e12:.2f} TFLOP counted; at {cores} cores x {peak:.1f} GFLOP/s "
        f"(single-thread matmul peak per CPU second) that is {bound:.1f} s (physical bound)"
    )
    if args.skip_run:
        return 0

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ftbench-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        warm = tmp / "cache-warm"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fewshot_transfer.cli",
                "run",
                "--learners",
                "source-only",
                "--shots",
                "1",
                "--seeds",
                "1",
                "--set",
                "train.pretrain_steps=0",
                "--out",
                str(tmp / "warm"),
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "FTBENCH_CACHE": str(warm)},
        )
        budget = (
            []
            if args.scale == 1.0
            else [
                "--set",
                f"train.steps={max(1, round(int(cfg['train']['steps']) * args.scale))}",
                "--set",
                f"train.pretrain_steps={max(1, round(int(cfg['train']['pretrain_steps']) * args.scale))}",
            ]
        )
        if budget:
            print(f"(b), (c) at {args.scale} of the step budget: {' '.join(budget[1::2])}")
        modes = {"1 job x 1 thread": (1, 1), "2 jobs x 1 thread": (2, 1), "1 job x 2 threads": (1, 2)}
        res = {}
        for label, (jobs, threads) in modes.items():
            name = f"j{jobs}t{threads}"
            res[label] = ftbench(
                [*CELLS_12, *budget, "--jobs", str(jobs), "--set", f"run.threads={threads}"],
                tmp / name,
                cold_cache(tmp, name, warm / "datasets"),
            )
            r = res[label]
            print(
                f"(b) 12 scratch/finetune cells, {label}: wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
                f"in learner steps {r['train_s']:.1f} s (load average {os.getloadavg()[0]:.2f})"
            )
        base, par, thr = (res[m]["wall_s"] for m in modes)
        p = res["2 jobs x 1 thread"]
        print(
            f"(b) speed-up vs 1 x 1: 2 jobs {base / par:.2f}x, 1 x 2 threads {base / thr:.2f}x; "
            f"2 jobs vs 1 x 2 threads {thr / par:.2f}x"
        )
        print(
            f"(b) harness efficiency, 2 jobs: {p['train_s']:.1f} s in learner steps / (2 x {p['wall_s']:.1f} s wall) = "
            f"{p['train_s'] / (2 * p['wall_s']):.2f} (target >= 0.9; wall includes worker start and 2 source pretrainings)"
        )
        if args.skip_default:
            return 0
        seeds = int(cfg["run"]["seeds"])
        sub = ftbench(
            ["--seeds", str(args.subset_seeds), *budget], tmp / "default", cold_cache(tmp, "default", warm / "datasets")
        )
        scale = seeds / args.subset_seeds / args.scale
        wall = sub["wall_s"] * scale
        print(
            f"(c) default run subset: {sub['cells']} cells ({args.subset_seeds} of {seeds} seeds), default jobs = "
            f"{cores}: wall {sub['wall_s']:.1f} s, CPU {sub['cpu_s']:.1f} s, in learner steps {sub['train_s']:.1f} s, "
            f"efficiency {sub['train_s'] / (cores * sub['wall_s']):.2f} (load average {os.getloadavg()[0]:.2f})"
        )
        print(
            f"(c) default run ({n_cells} cells) scaled x{scale:.1f} (seeds, step budget): wall {wall:.0f} s = {wall / 60:.1f} min "
            f"(target <= 10 min)"
        )
        print(f"(d) actual / physical bound: {wall:.0f} s / {bound:.1f} s = {wall / bound:.1f}x (target <= 2x)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
