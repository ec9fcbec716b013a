"""``ftbench tune``: an Optuna study of one learner's hyperparameters at one k."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from fewshot_transfer.commands.run import add_plugin_flag, start_portable, with_plugins
from fewshot_transfer.harness.selection import DEFAULT_RULE, RULES, caveat, is_oracle, study_name

log = logging.getLogger(__name__)

HELP = """\
Tune one learner's hyperparameters (the entries of its table with a search
distribution: ftbench learners NAME) with Optuna, at one k.

Objective: the mean Dice over --episodes paired episodes (seeds 0..E-1), scored on the
labels --selection names:
  val         (default) a validation split carved from the target SUPPORT POOL: its patients
              are split (seeded, by patient, lesion-burden stratified, checked by the leakage
              guard) into a tuning-support part, from which the k shots are drawn, and a
              validation part, whose labeled slices are scored. It holds more labeled slices
              than a real k-shot user has; rows say so.
  shots       only the k shots (k >= 2): 2-fold over them, by patient where possible.
  source-val  the source domain's validation split (no target labels; the rule for k = 0).
  oracle      the TEST SET: an upper bound, marked ORACLE in every output, never a default.
Search: random draws (--trials of them), the sampler seeded by a stable hash of the learner
and k (--sampler-seed overrides), trial n's draw fixed by (seed, n), so a resumed study goes
on where it stopped instead of repeating draws.

Pruning: after each episode the trial reports to Optuna at step = episode index; median
(default) reports the running mean validation Dice, wilcoxon the episode's Dice (a paired
test against the best trial; needs about 5+ episodes to ever prune).

Hyperparameters already set in [learners.NAME] (via --config or --set, e.g.
--set learners.finetune.steps=100) are held fixed; the rest are searched.

The study lives in --storage (default sqlite:///OUT/study.db) under --study (default
LEARNER-kSHOTS, plus -RULE for a rule other than val). --trials counts the whole study, so rerunning the same command resumes
after an interruption, and several processes or machines given the same --storage URL
(e.g. postgresql://user:pw@host/db) share one study; heartbeats mark trials of a dead
worker as failed and re-queue them. At the end OUT/best.toml holds the resolved config with
[learners.NAME] = the best trial's values and tuned_from = its provenance:

  ftbench run --config OUT/best.toml --shots K --learners NAME

Dashboard: optuna-dashboard sqlite:///OUT/study.db   (pip install 'fewshot-transfer[dashboard]')
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="tune a learner's hyperparameters on a validation split of the support pool (never the test set)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("learner", help="learner to tune (see `ftbench run --help` for the registered names)")
    p.add_argument(
        "--shots",
        default="5",
        help="the k to tune for: a count, or a percentage / 'all' of the tuning-support pool (default 5)",
    )
    p.add_argument(
        "--trials", type=int, default=20, help="finished (complete + pruned) trials the study should hold (default 20)"
    )
    p.add_argument("--episodes", type=int, default=3, help="paired episodes (seeds 0..E-1) per trial (default 3)")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default sqlite:///OUT/study.db); postgresql://... to share across machines",
    )
    p.add_argument("--study", help="study name (default LEARNER-kSHOTS)")
    p.add_argument(
        "--out", default="runs/tune", help="output directory: study.db, best.toml, trials/ (default runs/tune)"
    )
    p.add_argument("--config", help="TOML config the study runs with (default: the quick profile)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key (as in ftbench run)"
    )
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--pruner", choices=("median", "wilcoxon", "none"), default="median", help="default median")
    p.add_argument(
        "--startup-trials", type=int, default=5, help="median pruner: complete trials before pruning starts (default 5)"
    )
    p.add_argument(
        "--warmup-episodes",
        type=int,
        default=1,
        help="never prune before this episode index (default 1: after two episodes at the earliest)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.5,
        help="share of the support pool's patients used for validation (default 0.5)",
    )
    p.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="evaluate this parameter set first (repeatable; skipped when the study already has it), "
        "e.g. --enqueue lr=0.0005,steps=150 to make sure the defaults are among the candidates",
    )
    p.add_argument(
        "--selection",
        choices=RULES,
        default=DEFAULT_RULE,
        help="which labels score the trials: val (default), shots, source-val or oracle (the test set)",
    )
    p.add_argument(
        "--sampler-seed",
        type=int,
        help="seed of the random-search sampler (default: a stable hash of the learner and k)",
    )
    p.add_argument("--top", type=int, default=8, help="trials listed in the summary table (default 8)")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        help="seconds between heartbeats of a running trial (default 60); 0 = none, for a study one process "
        "runs at a time: a trial a killed run left RUNNING is then failed and re-queued when the command is rerun",
    )
    p.add_argument(
        "--grace",
        type=int,
        default=180,
        help="seconds without a heartbeat before a trial counts as dead and is retried (default 180)",
    )
    add_plugin_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=main)


def build_config(args: argparse.Namespace) -> dict:
    from fewshot_transfer.config import resolve_config

    overrides = list(args.set) + [
        f"run.shots={json.dumps(str(args.shots))}",
        f"run.learners={json.dumps(args.learner)}",
    ]
    overrides.append(f"run.out={json.dumps(str(args.out))}")
    if args.device:
        overrides.append(f"run.device={json.dumps(args.device)}")
    return with_plugins(resolve_config(args.config, overrides), args)


def parse_enqueue(items: list[str], searched: list[str]) -> list[dict]:
    """``["lr=1e-3,steps=100", ...]`` -> parameter dicts (names must be searched ones)."""
    from fewshot_transfer.config import parse_value

    out = []
    for item in items:
        params = {}
        for part in filter(None, (x.strip() for x in item.split(","))):
            if "=" not in part:
                raise ValueError(f"--enqueue {item!r}: expected NAME=VALUE[,NAME=VALUE]")
            name, raw = (x.strip() for x in part.split("=", 1))
            if name not in searched:
                raise ValueError(f"--enqueue {item!r}: {name!r} is not searched (searched: {', '.join(searched)})")
            params[name] = parse_value(raw)
        out.append(params)
    return out


def main(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    start_portable(cfg, args)  # run.portable (--set run.portable=true): trials with portable floats
    import optuna
    from rich.console import Console

    from fewshot_transfer import learners
    from fewshot_transfer.harness.rundir import open_run
    from fewshot_transfer.harness.store import atomic_write_text
    from fewshot_transfer.tuning.space import searched_names
    from fewshot_transfer.tuning.storage import default_storage, make_storage, redact
    from fewshot_transfer.tuning.study import TuneSpec, identity, open_study, run_study, summary_table, write_best
    from fewshot_transfer.tuning.validation import selection_split

    console = Console()
    t0 = time.perf_counter()
    if args.trials < 1 or args.episodes < 1 or args.top < 1:
        raise ValueError("--trials, --episodes and --top must be >= 1")
    learners.load_plugins(cfg["run"]["plugins"])
    cls = learners.get(args.learner)
    out = Path(args.out)
    pinned = dict(cfg.get("learners", {}).get(cls.name, {}))
    free, fixed = searched_names(cls, pinned)
    enqueue = parse_enqueue(args.enqueue, free)
    cls.resolve_params(cfg)  # unknown pinned names fail here, before any data is loaded
    bench = open_run(cfg, out, check=False, write_config=False)  # a study folder: no run's config.toml
    split = selection_split(
        bench, args.selection, args.shots, val_fraction=args.val_fraction, seed=int(bench.plan.data.split["seed"])
    )
    label, k, info = split.label, split.k, split.info
    if warning := caveat(split.rule, k):
        log.warning(warning)
    if k == 0 and not cls.supports_k0:
        raise ValueError(f"learner {cls.name!r} needs labeled target shots; it has no k = 0 to tune at")
    name = args.study or study_name(cls.name, label, split.rule)
    storage_url = args.storage or default_storage(out)
    spec = TuneSpec(
        learner=cls.name,
        shots=label,
        episodes=args.episodes,
        val_fraction=args.val_fraction,
        config=cfg,
        storage=storage_url,
        study_name=name,
        out=out,
        pruner=args.pruner,
        startup_trials=args.startup_trials,
        warmup_episodes=args.warmup_episodes,
        sampler_seed=args.sampler_seed,
        n_trials=args.trials,
        timeout=args.timeout,
        heartbeat=args.heartbeat,
        grace=args.grace,
        selection=split.rule,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage_url, heartbeat=args.heartbeat, grace=args.grace)
    study = open_study(spec, storage, identity(spec, info, k))
    for params in enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    atomic_write_text(out / "validation_split.json", json.dumps({"study": name, **info}, indent=2) + "\n")
    console.print(
        f"[bold]ftbench tune[/bold] {cls.name} at k={label} ({k} shots): study [bold]{name}[/bold] in {redact(storage_url)}\n"
        f"  searching {', '.join(free)} with {args.trials} random draws (sampler seed {spec.sampler_seed})"
        + (f"; fixed by the config: {', '.join(f'{n}={pinned[n]}' for n in fixed)}" if fixed else "")
        + "\n"
        f"  selection rule {split.rule}: mean Dice over {args.episodes} episodes scored on {info['scored_on']}"
        + (" [bold red]— ORACLE, not a result a user could reproduce[/bold red]" if is_oracle(split.rule) else "")
        + f"\n  pruner {args.pruner}; dashboard: optuna-dashboard {redact(storage_url)}"
    )
    ran = run_study(spec, study, split, console=console, show_progress=not args.no_progress)
    console.print(summary_table(study, top=args.top, rule=split.rule))
    path = write_best(spec, study, info)
    best = study.best_trial
    console.print(
        f"ran {ran} trial(s) in {time.perf_counter() - t0:.1f} s; best trial #{best.number} {split.rule} Dice {best.value:.4f} "
        f"{best.user_attrs.get('learner_params', best.params)}\n"
        f"wrote {path}; next: ftbench run --config {path} --shots {label} --learners {cls.name}"
    )
    return 0
