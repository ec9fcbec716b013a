"""Per-cell cost of each adversarial learner vs ``finetune`` with the same step budget.

    python benchmarks/bench_adversarial.py                 # default phantom benchmark, 30 steps, 2 repeats
    python benchmarks/bench_adversarial.py --steps 150 --repeats 3 --set model.base=8

Every learner starts from the same cached source-pretrained model (pretrained once,
outside the timing), fits one cell (k = 5, seed 0) at the same target budget (``steps`` x
``batch_size`` shot rows) and is timed on its training loop (``ctx.train_seconds``) and
on the whole ``fit`` (which for the adversarial learners adds the D warm-up and the two
linear-probe readings). Learners are interleaved within each repeat so a change in
machine load hits all of them alike; the median over repeats is reported with the ratio
to finetune. The budget (issue #11): a whole adversarial cell <= 1.5x a finetune cell.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fewshot_transfer import learners
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import prepare

ADVERSARIAL = ["single-adv", "dual-adv", "adaptseg", "adaptseg-balanced"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="training steps per cell (same for every learner)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = leave torch's default)")
    ap.add_argument("--out", default="", help="bench dir (keeps the pretrained-model cache); default a temp dir")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = resolve_config(None, [*args.set, f"train.steps={args.steps}", f"run.shots='{args.k}'"])
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-adv-"))
    bench = prepare(cfg, out)
    names = ["finetune", *ADVERSARIAL]
    t0 = time.perf_counter()
    bench.context(learners.get("finetune"), args.k, 0).source_model()  # pretrain (or load) outside the timing
    print(
        f"source model ready in {time.perf_counter() - t0:.1f}s; {args.steps} steps/cell, k={args.k}, "
        f"{args.repeats} repeats, torch threads {torch.get_num_threads()}, image {cfg['data']['size']}px, "
        f"base {cfg['model']['base']}, batch {cfg['train']['batch_size']}"
    )
    train_s: dict[str, list[float]] = {n: [] for n in names}
    fit_s: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            cls = learners.get(name)
            ctx = bench.context(cls, args.k, 0)
            t = time.perf_counter()
            cls().fit(ctx)
            fit_s[name].append(time.perf_counter() - t)
            train_s[name].append(ctx.train_seconds)
    base_train = statistics.median(train_s["finetune"])
    base_fit = statistics.median(fit_s["finetune"])
    print(f"\n{'learner':<20}{'train s/cell':>14}{'ratio':>8}{'fit s/cell':>12}{'ratio':>8}{'ms/step':>10}")
    for name in names:
        tr, fi = statistics.median(train_s[name]), statistics.median(fit_s[name])
        print(
            f"{name:<20}{tr:>14.2f}{tr / base_train:>8.2f}{fi:>12.2f}{fi / base_fit:>8.2f}{1000 * tr / args.steps:>10.1f}"
        )
    worst = max(statistics.median(fit_s[n]) / base_fit for n in ADVERSARIAL)
    print(f"\nworst adversarial / finetune whole-cell (fit) ratio: {worst:.2f} (budget 1.5)")


if __name__ == "__main__":
    main()
