"""``ftbench run``: learners x k x seeds on paired support sets, then the leaderboard."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fewshot_transfer import portable
from fewshot_transfer.config import DEFAULT_LEARNERS, resolve_config
from fewshot_transfer.harness.selection import RULES, check_rule, is_oracle

log = logging.getLogger(__name__)

HELP = """\
Run the benchmark grid: every learner x every k x every seed, on paired support sets
(all learners of one seed see the same k shots; shots are nested across k). With no
options it runs the embedded synthetic CAP -> COVID-19 phantom benchmark with the quick
profile (configs/quick.toml) and the default learner set, the references and one learner
of every other family (about 9 minutes on a 2-core CPU), plus dual-adv's control arm at
k = 0, its reference there (run.controls):
  LEARNER_SET
--learners all runs every registered learner.

k = 0 is the unsupervised setting (no target labels, the unlabeled target slices only):
learners that can run without labels (supports_k0) get a cell there, the others show
"n/a"; gains at k = 0 are against source-only. Unlabeled target data of a cell = the
unlabeled pool plus the support-pool slices not drawn as its shots (labels stripped).

Hyperparameters (--protocol): "defaults" runs every learner with its code defaults;
"tuned" first gives every learner, at every k of the grid it runs at (k = 0 included), the
same Optuna budget (--trials random draws, --tune-episodes episodes each), then runs each
k's cells with that k's best draw (--tune-shots K: one study at K serves every k). The
draws are scored by --selection: val (a labeled validation split of the support pool: more
labels than k), shots (2-fold over the k shots only; defaults at k = 1, source-val at
k = 0), source-val (the source domain's validation split) or oracle (the TEST SET: an
upper bound, marked ORACLE everywhere). Studies in OUT/tuning/study.db, resumed on rerun.
The leaderboard header and every row name the rule.

Cells run single-threaded by default (run.threads = 1), so their numbers do not depend on
the machine's core count. They use the fastest kernels this CPU offers, so their bits
reproduce only on the same CPU kernel path; --portable (run.portable) pins kernels whose
bits are the same on any x86-64 CPU (with the same torch, numpy and glibc), at about 2.5x
the fit time; the command restarts itself with them, and a portable run never shares a run
directory, study or model-cache entry with a native one.

Finished cells are stored at once; rerunning the same command after an interruption
resumes where it stopped. Outputs in --out: leaderboard.{md,csv,json},
transfer_gain.png, config.toml (resolved), split.json, cells/ (one JSON per cell, loss
curves CSV, gallery predictions), gallery.npz (the gallery slices, for `ftbench report`), and
with --plots prediction galleries and loss-curve PNGs. Pretrained and
meta-trained models are cached in $FTBENCH_CACHE/models (default ~/.cache/ftbench),
keyed by everything they depend on, and shared by runs.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the benchmark grid and write the leaderboard",
        description=HELP.replace("LEARNER_SET", DEFAULT_LEARNERS.replace(",", ", ")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shots",
        help="k values: counts (0 = no target labels), fractions of the support pool, or 'all' "
        "(e.g. 0,1,5,20,25%%,all); default 0,1,5,20",
    )
    p.add_argument(
        "--learners",
        help="comma list of learners, or 'all' (every registered one); default: one or two per family (run.learners)",
    )
    p.add_argument(
        "--seeds", help="number of seeds N (seeds 0..N-1) or an explicit list '0,3,7' (one seed: '3,'); default 3"
    )
    p.add_argument(
        "--config",
        help="TOML config (configs/quick.toml is the default, configs/full.toml is GPU-sized); "
        "a best.toml written by `ftbench tune` works too",
    )
    p.add_argument("--out", help="output directory (default runs/quick)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--target", help="target dataset folder (default: phantom:covid)")
    p.add_argument(
        "--source",
        help="source dataset folder (default: phantom:cap); A,B = the union of several, patient ids "
        "prefixed with each dataset's name, each slice keeping its dataset of origin",
    )
    p.add_argument("--plots", action="store_true", help="also write prediction galleries per k and loss-curve PNGs")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.steps=50 --set learners.finetune.lr=1e-4",
    )
    p.add_argument(
        "--protocol", choices=("defaults", "tuned"), help="how hyperparameters are chosen (default: defaults)"
    )
    p.add_argument(
        "--trials", type=int, help="--protocol tuned: random draws per learner and k, the same for all (default 20)"
    )
    p.add_argument(
        "--selection",
        choices=RULES,
        help="--protocol tuned: which labels choose the hyperparameters: val (default), shots, source-val, oracle",
    )
    p.add_argument("--tune-shots", help="--protocol tuned: tune once at this k for every k (default: a study per k)")
    p.add_argument("--tune-episodes", type=int, help="--protocol tuned: paired episodes per trial (default 3)")
    p.add_argument(
        "--controls",
        nargs="?",
        const="all",
        metavar="LEARNERS",
        help="add each learner's control arm as its own row (the same learner and batch stream with its "
        "mechanism off: adversarial lambda_adv = 0, meta_steps = 0, unlabeled weight 0, finetune -> scratch "
        "init, joint -> source share 0) and a mechanism-gain column; a bare --controls = every requested "
        "learner's, or a comma list (NAME@K: at k = K only), or 'none' (default run.controls: dual-adv@0)",
    )
    p.add_argument(
        "--replicates",
        type=int,
        help="train every cell R times on its episode (same shots and pools, other initialisation, batch "
        "order and augmentation) and average them per seed before pairing (default run.replicates = 1)",
    )
    p.add_argument(
        "--portable",
        action="store_true",
        help="portable floats: kernels whose bits do not depend on the x86-64 CPU, at about 2.5x the fit "
        "time (run.portable; fewshot_transfer/portable.py)",
    )
    p.add_argument("--retry-failed", action="store_true", help="recompute cells recorded as failed")
    p.add_argument(
        "--metrics",
        action="append",
        metavar="SET",
        help="also show this metric set beside Dice at 0.5 (repeatable; 'infnet': the COVID-SemiSeg table's "
        "meanDic / maxDic / adpDic / meanSen / meanSpe / MAE); sets eval.metrics",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="cells run side by side in this many worker processes, one thread each "
        "(default run.jobs = 0: one per physical core; 1 = in this process)",
    )
    add_plugin_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=main)


def add_plugin_flag(p: argparse.ArgumentParser) -> None:
    """``--plugin``: learner modules from outside the package (shared by run, tune, grid submit)."""
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help="import a learner plugin (a .py file or a module name) before learners are resolved; "
        "repeatable; recorded in the run's config.toml as run.plugins",
    )


def with_plugins(cfg: dict, args: argparse.Namespace) -> dict:
    """Append ``--plugin`` values to ``run.plugins`` (a config's own plugins stay first)."""
    cfg["run"]["plugins"] = list(dict.fromkeys([*cfg["run"]["plugins"], *getattr(args, "plugin", [])]))
    return cfg


def build_config(args: argparse.Namespace) -> dict:
    """Defaults < --config < command-line flags (< --set); ``--plugin`` adds to run.plugins."""
    overrides = list(args.set)
    flag_keys = {
        "shots": "run.shots",
        "learners": "run.learners",
        "seeds": "run.seeds",
        "out": "run.out",
        "device": "run.device",
        "target": "data.target",
        "source": "data.source",
        "protocol": "run.protocol",
        "tune_shots": "run.tune_shots",
        "selection": "run.selection",
        "jobs": "run.jobs",
        "controls": "run.controls",
    }
    for attr, key in flag_keys.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(
                f"{key}={value}" if attr == "jobs" or (attr == "seeds" and "," not in value) else f'{key}="{value}"'
            )
    for attr, key in (
        ("trials", "run.trials"),
        ("tune_episodes", "run.tune_episodes"),
        ("replicates", "run.replicates"),
    ):
        if getattr(args, attr, None) is not None:
            overrides.append(f"{key}={int(getattr(args, attr))}")
    if getattr(args, "plots", False):
        overrides.append("run.plots=true")
    if getattr(args, "portable", False):
        overrides.append("run.portable=true")
    if getattr(args, "metrics", None):
        overrides.append("eval.metrics=" + json.dumps(list(dict.fromkeys(args.metrics))))
    return with_plugins(resolve_config(args.config, overrides), args)


def start_portable(cfg: dict, args: argparse.Namespace) -> None:
    """``run.portable``: pin the portable kernels before torch starts (restarting the command when
    it is one), then switch oneDNN and NNPACK off; nothing for a native run."""
    if cfg["run"].get("portable"):
        portable.start(restart=getattr(args, "restartable", False))


def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cfg = build_config(args)
    start_portable(cfg, args)
    from fewshot_transfer import learners
    from fewshot_transfer.commands import console as make_console
    from fewshot_transfer.harness.outputs import render, render_curves, render_gallery
    from fewshot_transfer.harness.planning import resolve_learners, resolve_seeds
    from fewshot_transfer.harness.rundir import check_out_path, open_run
    from fewshot_transfer.harness.runner import plan_cells, run_grid
    from fewshot_transfer.provenance import code_version
    from fewshot_transfer.tuning.protocol import PROTOCOLS, tune_learners

    console = make_console()
    run_cfg = cfg["run"]
    out = Path(run_cfg["out"])
    check_out_path(out)  # before any study: a bad --out fails at once
    learners.load_plugins(cfg["run"]["plugins"])  # plugin learners' names resolve below
    if run_cfg.get("protocol") not in PROTOCOLS:
        raise ValueError(f"run.protocol must be one of {', '.join(PROTOCOLS)}, got {run_cfg.get('protocol')!r}")
    names = resolve_learners(run_cfg["learners"], cfg)
    resolve_seeds(run_cfg["seeds"])  # a bad --seeds fails before any study
    if getattr(args, "selection", None) and run_cfg["protocol"] != "tuned":
        raise ValueError("--selection chooses how --protocol tuned selects hyperparameters; add --protocol tuned")
    if run_cfg["protocol"] == "tuned":
        rule = check_rule(str(run_cfg["selection"]))
        console.print(
            f"[bold]--protocol tuned[/bold]: {run_cfg['trials']} random draws per learner and "
            f"{'k = ' + str(run_cfg['tune_shots']) if run_cfg.get('tune_shots') else 'k'}, selection rule {rule}"
            + (" [bold red](ORACLE: selected on the test set)[/bold red]" if is_oracle(rule) else "")
            + f" (studies in {out / 'tuning'})"
        )
        cfg, outcome = tune_learners(cfg, names, out, console=console, show_progress=not args.no_progress)
        for name, text in outcome.items():
            console.print(f"  {name}: {text}")
    if int(run_cfg.get("replicates", 1)) < 1:
        raise ValueError(f"run.replicates must be >= 1, got {run_cfg.get('replicates')}")
    bench = open_run(cfg, out, strict_controls=args.controls is not None)
    plan, controls = bench.plan, bench.controls
    replicates = plan.run.replicates
    cells = plan_cells(bench, [*plan.run.learners, *controls], plan.run.seeds, only_at=controls, replicates=replicates)
    console.print(
        f"[bold]ftbench run[/bold]: {len(plan.run.learners)} learners"
        + (f" + {len(controls)} control arms ({', '.join(controls)})" if controls else "")
        + f" x k={','.join(lab for lab, _ in bench.shots)} x {len(plan.run.seeds)} seeds"
        + (f" x {replicates} training replicates" if replicates > 1 else "")
        + f" = {len(cells)} cells -> {out}"
    )
    records = run_grid(
        bench, cells, retry_failed=args.retry_failed, show_progress=not args.no_progress, jobs=plan.run.jobs
    )
    wall = time.perf_counter() - t0
    train_s = sum(r.get("timing", {}).get("train_s", 0.0) for r in records)
    meta = {
        "source": f"{bench.source.name} ({bench.source.fingerprint})",
        "target": f"{bench.target.name} ({bench.target.fingerprint})",
        "support pool": f"{len(bench.support_pool)} slices, {bench.eligible} eligible, "
        f"{len(bench.split.support)} patients",
        "test set": f"{len(bench.test_set)} slices, {len(bench.split.test)} patients",
        "code (this render)": code_version(),
        "config": str(out / "config.toml"),
    }
    render([out], out, meta=meta, console=console, shots=bench.shots, metrics=plan.metrics)
    if plan.run.plots:
        extra = render_gallery(bench, records, out) + render_curves(out)
        console.print(f"plots: {len(extra)} PNGs (galleries in {out}, loss curves in {out / 'cells'})")
    console.print(
        f"wall {wall:.1f} s; time in learner training {train_s:.1f} s of the cells run now or before "
        f"(model cache: {bench.cache.hits} hits, {bench.cache.misses} trained)"
    )
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        console.print(f"[yellow]{len(failed)} cells failed; see the notes column and cells/*.json[/yellow]")
    return 0
