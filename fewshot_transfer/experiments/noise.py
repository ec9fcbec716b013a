"""The noise floor of a cell: CPU kernel path, training noise at a fixed episode, episode to episode.

    python -m fewshot_transfer.experiments.noise                      # scratch + finetune, k = 5, 5 episodes x 4 replicates
    python -m fewshot_transfer.experiments.noise --out results/noise  # also writes noise.json and README.md there
    python -m fewshot_transfer.experiments.noise --work results/noise --from-runs --out results/noise  # recompute, no training

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

Each component comes with a 95% interval (normal-theory, balanced one-way layout: E
episodes, R replicates): ``sd_train`` chi-square with E(R − 1) df; ``sd_kernel`` chi-square
with E − 1 df (then / sqrt(2)); ``sd_episode`` the modified large-sample (MLS) interval for
(MS_between − MS_within) / R (Burdick & Graybill 1992, one-way random model), beside the
exact F-test of sigma2_episode = 0 (``p_episode``); ``train_share`` = 1 − the intraclass
correlation, whose exact interval comes from MS_between / MS_within ~ F(E − 1, E(R − 1)).
Bounds below zero are reported as 0. With 5 episodes the episode component's interval is
wide: read its point value with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from fewshot_transfer.experiments import ROOT


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


ALPHA = 0.05


def sd_interval(var: float, df: int, alpha: float = ALPHA) -> list[float]:
    """Chi-square interval of an SD whose variance estimate ``var`` has ``df`` degrees of freedom."""
    lo, hi = stats.chi2.ppf([1 - alpha / 2, alpha / 2], df)
    return [float((df * var / lo) ** 0.5), float((df * var / hi) ** 0.5)]


def episode_interval(msb: float, msw: float, e: int, r: int, alpha: float = ALPHA) -> list[float]:
    """MLS interval of sigma_episode = sqrt((MSB − MSW) / R), balanced one-way random model
    (Burdick & Graybill 1992: the interval for a difference of two expected mean squares)."""
    n1, n2 = e - 1, e * (r - 1)

    def f_inf(q: float, n: int) -> float:  # F(q; n, infinity) = chi2(q; n) / n
        return float(stats.chi2.ppf(q, n) / n)

    g1, h1 = 1 - 1 / f_inf(1 - alpha / 2, n1), 1 / f_inf(alpha / 2, n1) - 1
    g2, h2 = 1 - 1 / f_inf(1 - alpha / 2, n2), 1 / f_inf(alpha / 2, n2) - 1
    fu, fl = float(stats.f.ppf(1 - alpha / 2, n1, n2)), float(stats.f.ppf(alpha / 2, n1, n2))
    g12 = ((fu - 1) ** 2 - g1**2 * fu**2 - h2**2) / fu
    h12 = ((1 - fl) ** 2 - h1**2 * fl**2 - g2**2) / fl
    d = msb - msw
    lo = (d - (g1**2 * msb**2 + h2**2 * msw**2 + g12 * msb * msw) ** 0.5) / r
    hi = (d + (h1**2 * msb**2 + g2**2 * msw**2 + h12 * msb * msw) ** 0.5) / r
    return [max(0.0, lo) ** 0.5, max(0.0, hi) ** 0.5]


def share_interval(msb: float, msw: float, e: int, r: int, alpha: float = ALPHA) -> list[float]:
    """Exact interval of the training share 1 − ICC (ICC = sigma2_episode / (sigma2_episode + sigma2_train)):
    (MSB / MSW) / (1 + R sigma2_episode / sigma2_train) ~ F(E − 1, E(R − 1))."""
    n1, n2 = e - 1, e * (r - 1)
    ratio = msb / msw
    f_lo = ratio / float(stats.f.ppf(1 - alpha / 2, n1, n2))
    f_hi = ratio / float(stats.f.ppf(alpha / 2, n1, n2))
    icc = [min(1.0, max(0.0, (x - 1) / (x + r - 1))) for x in (f_lo, f_hi)]
    return [1 - icc[1], 1 - icc[0]]


def components(values: np.ndarray) -> dict[str, float]:
    """``values[episode, replicate]`` -> one-way random-effects variance components, with 95% intervals."""
    e, r = values.shape
    within = float(values.var(axis=1, ddof=1).mean()) if r > 1 else float("nan")
    between_ms = r * float(values.mean(axis=1).var(ddof=1))
    episode = max(0.0, (between_ms - within) / r) if r > 1 else float("nan")
    out = {
        "sd_train": within**0.5,
        "sd_episode": episode**0.5,
        "train_share": within / (within + episode) if within + episode > 0 else float("nan"),
        "mean": float(values.mean()),
    }
    if r > 1 and within > 0:
        out["sd_train_ci"] = sd_interval(within, e * (r - 1))
        out["sd_episode_ci"] = episode_interval(between_ms, within, e, r)
        out["p_episode"] = float(stats.f.sf(between_ms / within, e - 1, e * (r - 1)))
        out["train_share_ci"] = share_interval(between_ms, within, e, r)
    return out


def kernel_sd(diffs: np.ndarray) -> dict:
    """SD of the kernel path (SD of default − best over episodes / sqrt(2)) with its chi-square interval."""
    ci = [b / 2**0.5 for b in sd_interval(float(diffs.var(ddof=1)), diffs.size - 1)]
    return {"sd_kernel": float(diffs.std(ddof=1) / 2**0.5), "sd_kernel_ci": ci}


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m fewshot_transfer.experiments.noise",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--learners", default="scratch,finetune", help="two learners: the gain is second − first")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--replicates", type=int, default=4)
    ap.add_argument("--work", default="runs/noise", help="the two ftbench run directories go here")
    ap.add_argument("--out", default="", help="write noise.json and README.md here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides for both runs")
    ap.add_argument(
        "--from-runs",
        action="store_true",
        help="no training: recompute the report from the two run directories already in --work "
        "(e.g. --work results/noise); an existing OUT/README.md keeps its text, only its report block is replaced",
    )
    args = ap.parse_args()
    names = args.learners.split(",")
    work = Path(args.work)
    common = ["--learners", args.learners, "--shots", str(args.k), "--seeds", str(args.episodes), "--jobs", "1"]
    common += ["--controls", "none", "--no-progress", *[a for s in args.set for a in ("--set", s)]]
    best, default = work / "best", work / "kernel-default"
    if not args.from_runs:
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
        report[name] = {**components(v), **kernel_sd(diff), "kernel_diffs": diff.tolist()}
    a, b = names
    gain = np.array([[cells[(b, e, r)] - cells[(a, e, r)] for r in reps] for e in episodes])
    kd = np.array([kernel_cells[(b, e, 0)] - kernel_cells[(a, e, 0)] - gain[e, 0] for e in episodes])
    report[f"{b} - {a}"] = {**components(gain), **kernel_sd(kd)}

    def ci(c: dict, key: str, digits: int = 3) -> str:
        lo, hi = c.get(f"{key}_ci", (float("nan"), float("nan")))
        return f"{c[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    lines = [
        f"noise floor at k = {args.k}: {args.episodes} episodes x {args.replicates} training replicates "
        f"(Dice SDs; kernel = ATEN_CPU_CAPABILITY=default vs this machine's best path)",
        f"{'':<20}{'mean':>7}  {'sd kernel [95% CI]':<22}{'sd train [95% CI]':<22}"
        f"{'sd episode [95% CI]':<22}{'p(episode=0)':<14}{'train share [95% CI]'}",
    ]
    for key, c in report.items():
        lines.append(
            f"{key:<20}{c['mean']:>7.3f}  {ci(c, 'sd_kernel'):<22}{ci(c, 'sd_train'):<22}"
            f"{ci(c, 'sd_episode'):<22}{c.get('p_episode', float('nan')):<14.2g}{ci(c, 'train_share', 2)}"
        )
    lines.append(
        "95% CIs: chi-square (kernel, train), MLS for the episode component (Burdick & Graybill), "
        "exact F for the train share; p(episode=0): F-test of MS_between / MS_within"
    )
    g = report[f"{b} - {a}"]
    verdict = (
        "training noise dominates the gain's spread: average replicates (--replicates R)"
        if g["train_share"] > 0.5
        else "episode-to-episode spread dominates: more seeds buy more than replicates"
    )
    lo, hi = g.get("train_share_ci", (float("nan"), float("nan")))
    if lo <= 0.5 <= hi:
        verdict = (
            f"point estimate: {verdict.split(':')[0]}; not resolved: the train share's 95% CI "
            f"[{lo:.2f}, {hi:.2f}] includes 0.5 with {args.episodes} episodes"
        )
    lines.append(verdict)
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        command = "python -m fewshot_transfer.experiments.noise " + " ".join(sys.argv[1:])
        block = "```\n" + "\n".join(lines) + "\n```\n"
        readme = out / "README.md"
        if args.from_runs and readme.exists() and readme.read_text().count("```") >= 2:
            head, _, rest = readme.read_text().partition("```")
            readme.write_text(head + block + rest.partition("```")[2].removeprefix("\n"))
        else:
            readme.write_text(
                "# Noise floor of a cell\n\n"
                f"Command (from the repository root): `{command}`; the two run directories are in `{work}`.\n\n" + block
            )
        record = {"command": command, "components": report}
        if args.from_runs and (out / "noise.json").exists():
            old = json.loads((out / "noise.json").read_text())
            record = {"command": command, "runs_command": old.get("runs_command", old.get("command")), **record}
        (out / "noise.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
