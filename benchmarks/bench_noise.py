"""The noise floor of a cell: CPU kernel path, training noise at a fixed episode, episode to episode.

    python benchmarks/bench_noise.py                      # scratch + finetune, k = 5, 5 episodes x 4 replicates
    python benchmarks/bench_noise.py --out results/noise  # also writes noise.json and README.md there

Three sources move a cell's Dice, and a verdict must be larger than all of them:

* **kernel path**: the same cell (same code, config, seed) on another CPU instruction set.
  Measured here by rerunning replicate 0 of every episode with ``ATEN_CPU_CAPABILITY=default``
  (torch's portable kernels) in its own model cache, against this machine's best path;
* **training noise**: the same episode (same shots, pools and test set) trained with other
  initialisation / batch-order / augmentation seeds (``ftbench run --replicates R``);
* **episode to episode**: another support set of k shots (another seed).

Both runs go through ``ftbench run`` (resumable: rerun after an interruption). The variance
components come from a one-way random-effects ANOVA over episodes with R replicates each:
``sigma2_train`` = the mean within-episode variance, ``sigma2_episode`` = (MS_between −
MS_within) / R; the same for the paired finetune − scratch difference, which is what a gain's
CI is made of. ``sigma_kernel`` = SD of (default − best) over episodes / sqrt(2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def ftbench(args: list[str], env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "fewshot_transfer.cli", *args]
    print("$", " ".join(["ftbench", *args]), flush=True)
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, check=True)


def load(run_dir: Path, k: int) -> dict[tuple[str, int, int], float]:
    """(learner, seed, replicate) -> Dice of the run's cells at ``k``."""
    out = {}
    for path in (run_dir / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec.get("status") == "ok" and int(rec["k"]) == k:
            out[(rec["learner"], int(rec["seed"]), int(rec.get("replicate", 0)))] = float(rec["metrics"]["dice"])
    return out


def components(values: np.ndarray) -> dict[str, float]:
    """``values[episode, replicate]`` -> one-way random-effects variance components."""
    e, r = values.shape
    within = float(values.var(axis=1, ddof=1).mean()) if r > 1 else float("nan")
    between_ms = r * float(values.mean(axis=1).var(ddof=1))
    episode = max(0.0, (between_ms - within) / r) if r > 1 else float("nan")
    return {
        "sd_train": within**0.5,
        "sd_episode": episode**0.5,
        "train_share": within / (within + episode) if within + episode > 0 else float("nan"),
        "mean": float(values.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--learners", default="scratch,finetune", help="two learners: the gain is second − first")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--replicates", type=int, default=4)
    ap.add_argument("--work", default="runs/noise", help="the two ftbench run directories go here")
    ap.add_argument("--out", default="", help="write noise.json and README.md here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for both runs")
    args = ap.parse_args()
    names = args.learners.split(",")
    work = Path(args.work)
    common = ["--learners", args.learners, "--shots", str(args.k), "--seeds", str(args.episodes), "--jobs", "1"]
    common += ["--controls", "none", "--no-progress", *[a for s in args.set for a in ("--set", s)]]
    best, default = work / "best", work / "kernel-default"
    ftbench(["run", *common, "--replicates", str(args.replicates), "--out", str(best)])
    ftbench(
        ["run", *common, "--replicates", "1", "--out", str(default)],
        env={"ATEN_CPU_CAPABILITY": "default", "FTBENCH_CACHE": str((work / "cache-kernel-default").resolve())},
    )
    cells, kernel_cells = load(best, args.k), load(default, args.k)
    episodes, reps = range(args.episodes), range(args.replicates)
    report: dict[str, dict] = {}
    for name in names:
        v = np.array([[cells[(name, e, r)] for r in reps] for e in episodes])
        diff = np.array([kernel_cells[(name, e, 0)] - cells[(name, e, 0)] for e in episodes])
        report[name] = {**components(v), "sd_kernel": float(diff.std(ddof=1) / 2**0.5), "kernel_diffs": diff.tolist()}
    a, b = names
    gain = np.array([[cells[(b, e, r)] - cells[(a, e, r)] for r in reps] for e in episodes])
    kd = np.array([kernel_cells[(b, e, 0)] - kernel_cells[(a, e, 0)] - gain[e, 0] for e in episodes])
    report[f"{b} - {a}"] = {**components(gain), "sd_kernel": float(kd.std(ddof=1) / 2**0.5)}
    lines = [
        f"noise floor at k = {args.k}: {args.episodes} episodes x {args.replicates} training replicates "
        f"(Dice SDs; kernel = ATEN_CPU_CAPABILITY=default vs this machine's best path)",
        f"{'':<22}{'mean':>8}{'sd kernel':>11}{'sd train':>10}{'sd episode':>12}{'train share':>13}",
    ]
    for key, c in report.items():
        lines.append(
            f"{key:<22}{c['mean']:>8.3f}{c['sd_kernel']:>11.3f}{c['sd_train']:>10.3f}"
            f"{c['sd_episode']:>12.3f}{c['train_share']:>13.2f}"
        )
    g = report[f"{b} - {a}"]
    verdict = (
        "training noise dominates the gain's spread: average replicates (--replicates R)"
        if g["train_share"] > 0.5
        else "episode-to-episode spread dominates: more seeds buy more than replicates"
    )
    lines.append(verdict)
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/bench_noise.py " + " ".join(sys.argv[1:])
        (out / "noise.json").write_text(json.dumps({"command": command, "components": report}, indent=2) + "\n")
        (out / "README.md").write_text(
            "# Noise floor of a cell\n\n"
            f"Command (from the repository root): `{command}`; the two run directories are in `{work}`.\n\n"
            "```\n" + "\n".join(lines) + "\n```\n"
        )


if __name__ == "__main__":
    main()
