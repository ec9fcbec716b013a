"""Why does fine-tuning end below the source model it starts from? A measured answer.

    python scripts/diagnose_finetune.py results/real-claims/fold0 --k 5 --seeds 0,1 \\
        --lrs 0.006,0.002,0.0006 --out results/real-claims/finetune-diagnosis

For one run directory (its ``config.toml`` and ``split.json``: the same data, split, shots and
cached source model as its cells) and each seed, fine-tunes the cached source model on the
(k, seed) shots exactly as ``finetune`` does — the same batch stream, augmentation and
optimiser — under each lr, and, at the learner's own lr, with the encoder frozen. Every
``--every`` steps it scores the model on the fold's test slices (native resolution, as the
cells are scored) and on the support-pool slices that are not shots (held-out labeled target
slices, at model size: what a validation split would see). At the end it reports how far each
part of the network moved (relative parameter change of the encoder, decoder and heads).

What it answers: the step budget (the test Dice along the steps), the lr (one curve per lr),
which layers move (the frozen-encoder curve and the relative changes), and the selection
rule (the step and lr a held-out-slice score would have picked against the test score). The
run at the learner's own lr is the cell itself: its last point equals the cell's Dice to the
last bit (checked and printed). A diagnostic on the development folds' test slices, never a
selection: nothing here feeds back into a cell.

Writes ``OUT/diagnosis.json`` (every curve) and ``OUT/diagnosis.md`` (the table and figure
references) and ``OUT/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from fewshot_transfer import learners
from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.harness.runner import score
from fewshot_transfer.metrics import evaluate
from fewshot_transfer.training import slice_batches
from fewshot_transfer.training.loops import StepBatch, StepHooks, train_steps


class Checkpoints(StepHooks):
    """Scores the model every ``every`` steps and after the last; adds no term and draws no random number, so the
    training is the learner's own to the last bit."""

    def __init__(self, every: int, last: int, scorer) -> None:
        self.every = every
        self.last = last
        self.scorer = scorer
        self.model: torch.nn.Module | None = None
        self.points: list[dict] = []

    def after_step(self, batch: StepBatch) -> dict[str, float]:
        if batch.step % self.every == 0 or batch.step == self.last:
            assert self.model is not None
            self.points.append({"step": batch.step, **self.scorer(self.model)})
            self.model.train()
        return {}


def make_scorer(ctx, bench, held, threshold: float):
    """Test Dice (native resolution, as the cells) and held-out support-pool Dice (model size)."""

    def scorer(model: torch.nn.Module) -> dict:
        seg = ctx.segmenter(model)
        test = score(seg, bench.test_set, threshold)[0]["dice"]
        val = evaluate(seg.predict(held.images), held.masks, held.spacing)[0]["dice"]
        return {"test": float(test), "held_out": float(val)}

    return scorer


def part_of(name: str) -> str:
    return "encoder" if name.startswith("encoders") else "decoder" if name.startswith("decoders") else "heads"


def moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """||after - before|| / ||before|| per part of the network."""
    out: dict[str, list[float]] = {}
    for name, w0 in before.items():
        if not w0.is_floating_point():
            continue
        d = float((after[name] - w0).pow(2).sum())
        n = float(w0.pow(2).sum())
        acc = out.setdefault(part_of(name), [0.0, 0.0])
        acc[0] += d
        acc[1] += n
    return {k: (v[0] / v[1]) ** 0.5 if v[1] else float("nan") for k, v in out.items()}


def diagnose(run: Path, k: int, seeds: list[int], lrs: list[float], every: int) -> dict:
    config = resolve_config(run / "config.toml")
    bench = prepare(config, run)
    learners.available()
    cls = learners.get("finetune")
    threshold = float(config["train"]["threshold"])
    out: dict = {"run": str(run), "k": k, "seeds": {}}
    for seed in seeds:
        ctx = bench.context(cls, k, seed)
        shots = set(bench.shot_rows(k, seed).tolist())
        held = bench.support_pool.subset(np.array([i for i in range(len(bench.support_pool)) if i not in shots]))
        scorer = make_scorer(ctx, bench, held, threshold)

        source = ctx.source_model()
        base = {n: w.detach().clone() for n, w in source.state_dict().items()}
        row: dict = {"source": scorer(source), "runs": {}}
        own_lr = float(ctx.params.lr)
        variants = [(f"lr {lr:g}", lr, False) for lr in lrs] + [(f"lr {own_lr:g}, encoder frozen", own_lr, True)]
        for label, lr, frozen in variants:
            torch.manual_seed(ctx.seed)  # what run_cell does before fit, then finetune.fit's own order
            model = ctx.source_model()
            for name, p in model.named_parameters():
                p.requires_grad_(not (frozen and part_of(name) == "encoder"))
            hooks = Checkpoints(every, ctx.params.steps, scorer)
            hooks.model = model
            batches = slice_batches(ctx, ctx.support, ctx.params.batch_size)
            train_steps(ctx, model, batches, steps=ctx.params.steps, lr=lr, phase="target", hooks=hooks)
            row["runs"][label] = {"lr": lr, "frozen_encoder": frozen, "points": hooks.points}
            row["runs"][label]["moved"] = moved(base, model.state_dict())
            print(f"seed {seed} {label}: test Dice at the last step {hooks.points[-1]['test']:.4f}", flush=True)
        cell = run / "cells" / f"finetune__k-{k}__seed-{seed}.json"
        if cell.is_file():
            recorded = json.loads(cell.read_text())["metrics"]["dice"]
            last = row["runs"][f"lr {own_lr:g}"]["points"][-1]["test"] if own_lr in lrs else None
            row["cell_dice"] = recorded
            row["reproduces_cell"] = last == recorded
            print(f"seed {seed}: the cell recorded {recorded!r}; this run at lr {own_lr:g} ends at {last!r}")
        out["seeds"][str(seed)] = row
    return out


def markdown(result: dict, command: str) -> str:
    lines = [
        "# Why fine-tuning ends below the source model: test Dice along the steps",
        "",
        f"Command: `{command}`",
        "",
        "Test = the fold's test slices, native resolution (as the cells); held-out = the support-pool "
        "slices that are not shots, model size. `moved` = ||w − w_source|| / ||w_source|| per part.",
        "",
        "| seed | run | source | best test (step) | last test | best held-out (step) → its test | moved: encoder / decoder / heads |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, row in result["seeds"].items():
        src = row["source"]["test"]
        for label, r in row["runs"].items():
            pts = r["points"]
            bt = max(pts, key=lambda p: p["test"])
            bh = max(pts, key=lambda p: p["held_out"])
            m = r["moved"]
            lines.append(
                f"| {seed} | {label} | {src:.3f} | {bt['test']:.3f} ({bt['step']}) | {pts[-1]['test']:.3f} | "
                f"{bh['held_out']:.3f} ({bh['step']}) → {bh['test']:.3f} | "
                f"{m.get('encoder', float('nan')):.3f} / {m.get('decoder', float('nan')):.3f} / "
                f"{m.get('heads', float('nan')):.3f} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(result["seeds"])
    fig, axes = plt.subplots(1, len(seeds), figsize=(5 * len(seeds), 3.6), squeeze=False)
    for ax, seed in zip(axes[0], seeds):
        row = result["seeds"][seed]
        for label, r in row["runs"].items():
            steps = [0] + [p["step"] for p in r["points"]]
            ax.plot(steps, [row["source"]["test"]] + [p["test"] for p in r["points"]], label=label)
        ax.axhline(row["source"]["test"], color="k", ls=":", lw=1, label="source model")
        ax.set(title=f"seed {seed}, k = {result['k']}", xlabel="fine-tuning step", ylabel="test Dice")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="an ftbench run directory (config.toml, split.json, cells/)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seeds", default="0,1", help="comma list")
    ap.add_argument("--lrs", default="0.006,0.002,0.0006", help="comma list; include finetune's own lr")
    ap.add_argument("--every", type=int, default=20, help="score every N steps")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = diagnose(
        args.run, args.k, [int(s) for s in args.seeds.split(",")], [float(v) for v in args.lrs.split(",")], args.every
    )
    command = "python scripts/diagnose_finetune.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "diagnosis.json", json.dumps({"command": command, **result}, indent=1) + "\n")
    atomic_write_text(args.out / "diagnosis.md", markdown(result, command))
    plot(result, args.out / "curves.png")
    print(markdown(result, command))


if __name__ == "__main__":
    main()
