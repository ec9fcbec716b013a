"""Positive controls of the adversarial mechanisms: scenarios built so that each mechanism is needed.

    python -m fewshot_transfer.experiments.controls scanner-shift              # adaptseg beats its lambda = 0 control at k = 0
    python -m fewshot_transfer.experiments.controls class-conditional          # dual-adv beats single-adv and its control
    python -m fewshot_transfer.experiments.controls imbalance                  # adaptseg collapses, its control and the balanced one do not
    python -m fewshot_transfer.experiments.controls scanner-shift --draw 1 --out results/controls/scanner-shift-replication

A scenario is a frozen config preset (``configs/scenarios/<name>.toml``: phantom domains,
step budget, the hyperparameters its learners share, and ``[control]``: the k values, the
comparisons that make the claim, the preconditions' thresholds and every variant tried
before the preset was frozen). The script

1. measures the **preconditions** and prints them before any verdict: source-only's Dice in
   its own domain (source validation) and on the target, its pred/true lesion fraction there,
   a target-trained oracle (scratch on every support-pool label), the per-class domain
   probes of the source model at the aligned layer (lesion-only, background-only) beside
   their null reading (two patient groups of the source domain: patient variation alone),
   and for a confidence-routed learner where its routing sends the target's true lesion
   pixels; ``preconditions_at`` holds thresholds that only the comparisons at one k need;
2. runs the comparison's learners and their **control arms** (the same learner and stream,
   mechanism off; ``learners/controls.py``) on paired episodes through the harness's own
   ``run_cell`` (so every cell records its probes, budget and provenance);
3. judges each comparison by its paired difference, Holm-corrected over every comparison
   of every variant tried (the preset's ``variants_tried`` plus the one run): the claim holds
   only when every comparison's corrected p < 0.05 with a positive mean. A scenario whose
   preconditions fail gives no verdict (``holds: null``) and says which failed.

``--draw D`` replicates on an independent data draw: every phantom seed and the split seed
move, so the patients, the test set and the unlabeled pool are new. With ``--out`` it writes
``cells.csv``, ``outcome.json`` (``holds``, ``preconditions``, the paired differences against
the controls) and ``README.md`` (command, code and preset commit). Runs single-threaded.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from fewshot_transfer import learners
from fewshot_transfer.adaptation.losses import confident_regions
from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.config import load_toml, resolve_config, to_toml
from fewshot_transfer.experiments import ROOT
from fewshot_transfer.harness.benchmark import Benchmark
from fewshot_transfer.harness.claims import ALPHA, K_INDEPENDENT, compare
from fewshot_transfer.harness.leaderboard import COLLAPSE_RATIO
from fewshot_transfer.harness.rundir import open_run
from fewshot_transfer.harness.runner import probe_reading, run_cell
from fewshot_transfer.harness.stats import holm, parse_comparison
from fewshot_transfer.harness.store import CellSpec, write_csv
from fewshot_transfer.metrics import evaluate
from fewshot_transfer.provenance import code_version

#: Seed offset of one data draw (phantom patients, test set, unlabeled pool, split).
DRAW_STRIDE = 7919


def with_draw(cfg: dict, draw: int) -> dict:
    """The preset on data draw ``draw`` (0 = as written): every phantom seed and the split seed move."""
    if not draw:
        return cfg
    data = cfg["data"]
    shift = DRAW_STRIDE * draw

    def move(spec: str) -> str:
        if not spec.startswith("phantom:"):
            raise ValueError(f"--draw needs phantom domains, got {spec!r}")
        if re.search(r"[?&]seed=\d+", spec):
            return re.sub(r"([?&]seed=)(\d+)", lambda m: f"{m.group(1)}{int(m.group(2)) + shift}", spec)
        sep = "&" if "?" in spec else "?"
        return f"{spec}{sep}seed={int(data['phantom']['seed']) + shift}"

    data = {
        **data,
        "source": move(str(data["source"])),
        "target": move(str(data["target"])),
        "phantom": {**data["phantom"], "seed": int(data["phantom"]["seed"]) + shift},
        "split": {**data["split"], "seed": int(data["split"]["seed"]) + draw},
    }
    return {**cfg, "data": data}


def preset_commit(path: Path) -> str:
    """The last commit that touched the preset (the replication must come after it)."""
    out = subprocess.run(
        ["git", "log", "-1", "--format=%h", "--", str(path)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "uncommitted"


def cell(bench: Benchmark, learner: str, k: int, seed: int, label: str | None = None) -> dict:
    record = run_cell(bench, CellSpec(seed=seed, k=k, k_label=label or str(k), learner=learner))
    if record["status"] != "ok":
        raise RuntimeError(f"{learner} k={k} seed {seed} failed: {record.get('reason')}")
    return record


#: Every fact ``preconditions`` measures (the routing ones for confidence-routed learners only).
FACTS = (
    "source_only_in_domain",
    "source_only_target",
    "source_only_drop",
    "source_only_pred_true",
    "oracle_target",
    "oracle_gap",
    "probe_lesion_before",
    "probe_background_before",
    "probe_lesion_null",
    "probe_background_null",
    "probe_lesion_excess",
    "probe_background_excess",
)
ROUTING_FACTS = ("routed_lesion_as_lesion", "routed_lesion_as_background")


def routing(model: torch.nn.Module, params, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Where a confidence-routed learner (dual-adv) would send the target's true lesion pixels.

    The source model's predictions on the given target slices, routed as the learner routes
    unlabeled rows (``confident_regions``: lesion, background, or the ignore band). At k = 0
    this is the only routing the lesion discriminator gets: a lesion pixel routed to the
    background discriminator is pulled toward source *background* features."""
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float()
    y = torch.from_numpy(np.ascontiguousarray(masks)).unsqueeze(1) > 0
    with torch.no_grad():
        prob = torch.sigmoid(model(x))
    pos, neg = confident_regions(prob, params.conf_threshold, params.ignore_radius)
    lesion = max(1, int(y.sum()))
    return {
        "routed_lesion_as_lesion": int((pos & y).sum()) / lesion,
        "routed_lesion_as_background": int((neg & y).sum()) / lesion,
    }


def preconditions(bench: Benchmark, spec: dict, seeds: list[int]) -> dict:
    """Measured facts the claim rests on, each with its threshold and whether it is met.

    The per-class probes come with a null reading: the same probe between two patient groups
    of the *source* domain (training vs validation patients), i.e. what patient-to-patient
    variation alone separates with this many patients. ``probe_*_excess`` = domain reading
    minus null reading is the part a domain shift explains. ``preconditions`` hold for the
    whole claim; ``preconditions_at`` (``{"K": {...}}``) only for the comparisons at k = K.

    Everything but the oracle is read on the target's *support pool* (labeled training
    slices, no test patient), so a preset's knobs tuned to meet a precondition (dual-adv's
    routing threshold, say) are never chosen on the test set; the oracle is a trained
    learner and is scored where every learner is, on the test set."""
    facts_per_seed: list[dict[str, float]] = []
    probe_learner = learners.get(spec["probe_learner"])
    routed = "conf_threshold" in probe_learner.defaults
    reader = probe_learner()
    nan = lambda v: np.nan if v is None else v  # noqa: E731
    pool = bench.support_pool
    for seed in seeds:
        ctx = bench.context(probe_learner, 0, seed)
        model = ctx.source_model().eval()
        seg = ctx.segmenter(model)
        own = evaluate(seg.predict(bench.source_val.images), bench.source_val.masks)[0]["dice"]
        s = evaluate(seg.predict(pool.images), pool.masks)[0]
        _, probe = probe_reading(bench, reader, ctx, model, pair=(bench.source_val, pool))
        _, null = probe_reading(bench, reader, ctx, model, pair=(bench.source_val, bench.source_train))
        facts_per_seed.append(
            {
                "source_only_in_domain": own,
                "source_only_target": s["dice"],
                "source_only_pred_true": s["pred_fraction"] / s["true_fraction"],
                "probe_lesion_before": nan(probe["lesion"]),
                "probe_background_before": probe["background"],
                "probe_lesion_null": nan(null["lesion"]),
                "probe_background_null": null["background"],
                **(routing(model, ctx.params, pool.images, pool.masks) if routed else {}),
            }
        )
    oracle = [cell(bench, "scratch", bench.eligible, s, "all")["metrics"]["dice"] for s in seeds]
    facts = {key: float(np.nanmean([f[key] for f in facts_per_seed])) for key in facts_per_seed[0]}
    facts["source_only_drop"] = facts["source_only_in_domain"] - facts["source_only_target"]
    facts["oracle_target"] = float(np.mean(oracle))
    facts["oracle_gap"] = facts["oracle_target"] - facts["source_only_target"]
    facts["probe_lesion_excess"] = facts["probe_lesion_before"] - facts["probe_lesion_null"]
    facts["probe_background_excess"] = facts["probe_background_before"] - facts["probe_background_null"]
    assert set(facts) == set(FACTS) | (set(ROUTING_FACTS) if routed else set()), sorted(facts)

    def check(rules: dict) -> dict:
        out = {}
        for name, rule in rules.items():
            if name not in facts:
                raise SystemExit(f"precondition {name!r}: no such measured fact (known: {', '.join(sorted(facts))})")
            op, threshold = rule[:2], float(rule[2:])
            value = facts[name]
            met = value >= threshold if op == ">=" else value <= threshold
            out[name] = {"value": round(value, 4), "rule": f"{op} {threshold:g}", "met": bool(met)}
        return out

    return {
        "facts": {k: round(v, 4) for k, v in facts.items()},
        "checks": check(spec["preconditions"]),
        "checks_at": {str(k): check(rules) for k, rules in spec.get("preconditions_at", {}).items()},
        "seeds": seeds,
    }


def judge(spec: dict, rows: list[dict], pre: dict, draw: int = 0) -> dict:
    """Paired differences of every comparison, Holm over comparisons x variants, collapse flags.

    On the preset's own data (draw 0) every variant tried before freezing it counts in the
    Holm family (untried variants count with p = 1, the most lenient bound that is still
    honest about the search); a replication on a new draw tests the one frozen preset."""
    table: dict[tuple[str, int], dict[int, float]] = defaultdict(dict)
    for r in rows:
        table[(r["learner"], -1 if r["learner"] in K_INDEPENDENT else r["k"])][r["seed"]] = r["dice"]
    comparisons = [compare(table, text) for text in spec["comparisons"]]
    n_variants = 1 + len(spec.get("variants_tried", [])) if draw == 0 else 1
    family = [c["p_value"] for c in comparisons] + [1.0] * (len(comparisons) * (n_variants - 1))
    unmet_at = {k: [n for n, c in checks.items() if not c["met"]] for k, checks in pre.get("checks_at", {}).items()}
    for c, p in zip(comparisons, holm(family)):
        c["p_holm"] = p
        c["supported"] = bool(p < ALPHA and c["mean"] > 0)
        c["unmet_preconditions"] = unmet_at.get(str(parse_comparison(c["comparison"])[2]), [])
    fractions = {}
    for name, k in sorted({(r["learner"], r["k"]) for r in rows}):
        rs = [r for r in rows if r["learner"] == name and r["k"] == k]
        pred, true = float(np.mean([r["pred_fraction"] for r in rs])), float(np.mean([r["true_fraction"] for r in rs]))
        fractions[f"{name} @ {k}"] = {
            "dice": float(np.mean([r["dice"] for r in rs])),
            "pred_true": pred / true,
            "collapsed": pred < COLLAPSE_RATIO * true,
        }
    collapse_ok = all(fractions[f"{name} @ {k}"]["collapsed"] for name, k in _pairs(spec.get("must_collapse", [])))
    collapse_ok &= not any(
        fractions[f"{name} @ {k}"]["collapsed"] for name, k in _pairs(spec.get("must_not_collapse", []))
    )
    failed = [name for name, c in pre["checks"].items() if not c["met"]]
    testable = [c for c in comparisons if not c["unmet_preconditions"]]
    holds = (
        None
        if failed or (comparisons and not testable)
        else bool(all(c["supported"] for c in testable) and collapse_ok)
    )
    return {
        "holds": holds,
        "failed_preconditions": failed,
        "untestable": [c["comparison"] for c in comparisons if c["unmet_preconditions"]],
        "comparisons": comparisons,
        "holm_family": f"{len(comparisons)} comparisons x {n_variants} variants"
        + (" (the run and every variant tried)" if draw == 0 else " (the frozen preset on a new draw)"),
        "fractions": fractions,
        "collapse_conditions_met": collapse_ok,
    }


def _pairs(items: list[str]) -> list[tuple[str, int]]:
    return [(t.split("@")[0].strip(), int(t.split("@")[1])) for t in items]


def precondition_lines(pre: dict) -> list[str]:
    def line(name: str, c: dict) -> str:
        return f"  {name} = {c['value']:.3f} (needs {c['rule']}): {'met' if c['met'] else 'NOT MET'}"

    lines = ["preconditions (measured on the source model and a target oracle):"]
    lines += [line(k, c) for k, c in pre["checks"].items()]
    for k, checks in pre.get("checks_at", {}).items():
        lines.append(f"preconditions of the comparisons at k = {k}:")
        lines += [line(name, c) for name, c in checks.items()]
    checked = set(pre["checks"]) | {n for checks in pre.get("checks_at", {}).values() for n in checks}
    other = {k: v for k, v in pre.get("facts", {}).items() if k not in checked}
    if other:
        lines.append("  also measured: " + ", ".join(f"{k} {v:.3f}" for k, v in other.items()))
    return lines


def report_lines(pre: dict, outcome: dict) -> list[str]:
    lines = precondition_lines(pre)
    lines.append("arms (mean over seeds):")
    lines += [
        f"  {arm}: dice {f['dice']:.3f}, pred/true {f['pred_true']:.2f}{' (COLLAPSED)' if f['collapsed'] else ''}"
        for arm, f in outcome["fractions"].items()
    ]
    lines.append(f"comparisons (paired 95% t-CI; Holm over {outcome['holm_family']}):")
    lines += [
        f"  {c['comparison']}: {c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}], n = {c['n']}, "
        f"p = {c['p_value']:.3g}, Holm p = {c['p_holm']:.3g}{' supported' if c['supported'] else ''}"
        + (
            f" (NO VERDICT at this k: {', '.join(c['unmet_preconditions'])} not met)"
            if c.get("unmet_preconditions")
            else ""
        )
        for c in outcome["comparisons"]
    ]
    if outcome["failed_preconditions"]:
        lines.append(f"NO VERDICT: preconditions not met ({', '.join(outcome['failed_preconditions'])})")
    elif outcome["holds"] is None:
        lines.append("NO VERDICT: the preconditions of every comparison's k failed")
    elif outcome.get("untestable"):
        lines.append(f"verdict over the testable comparisons only; no verdict for {', '.join(outcome['untestable'])}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m fewshot_transfer.experiments.controls",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("scenario", help="a preset in configs/scenarios/ (scanner-shift, class-conditional, imbalance)")
    ap.add_argument("--seeds", type=int, default=0, help="episodes (default: the preset's run.seeds)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--draw", type=int, default=0, help="independent data draw (0 = the preset's own data)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="", help="write cells.csv, outcome.json and README.md here")
    ap.add_argument("--work", default="", help="benchmark work dir; default runs/controls/<scenario>-draw<D>")
    ap.add_argument("--preconditions-only", action="store_true", help="measure and print the preconditions, run no arm")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (a variant)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = ROOT / "configs" / "scenarios" / f"{args.scenario}.toml"
    if not preset.is_file():
        known = ", ".join(sorted(p.stem for p in preset.parent.glob("*.toml")))
        raise SystemExit(f"no preset {preset}; known scenarios: {known}")
    work = Path(args.work or f"runs/controls/{args.scenario}-draw{args.draw}")
    work.mkdir(parents=True, exist_ok=True)
    user = load_toml(preset)
    spec = user.pop("control")
    (work / "preset.toml").write_text(to_toml(user))  # the benchmark config without the [control] table
    cfg = with_draw(resolve_config(work / "preset.toml", args.set), args.draw)
    cfg["control"] = spec
    seeds = list(range(args.first_seed, args.first_seed + (args.seeds or int(cfg["run"]["seeds"]))))
    bench = open_run(cfg, work, threads=args.threads, check=False, write_config=False)
    print(
        f"{args.scenario} (draw {args.draw}): {spec['claim']}\n  seeds {seeds[0]}..{seeds[-1]}, "
        f"{cfg['train']['steps']} steps, source {cfg['data']['source']}, target {cfg['data']['target']}",
        flush=True,
    )
    progress = Progress(Path(args.out) if args.out else None, args, cfg)
    pre = progress.preconditions or preconditions(bench, spec, seeds[: int(spec.get("precondition_seeds", 3))])
    progress.save_preconditions(pre)
    print("\n".join(precondition_lines(pre)), flush=True)
    if args.preconditions_only:
        print(json.dumps(pre["facts"]))
        return
    arms = sorted(
        {(n, k) for text in spec["comparisons"] for n, _, k in [parse_comparison(text)]}
        | {(b, k) for text in spec["comparisons"] for _, b, k in [parse_comparison(text)]}
        | set(_pairs(spec.get("must_collapse", []) + spec.get("must_not_collapse", []))),
        key=lambda t: (t[1], t[0]),
    )
    rows = [r for r in progress.rows if r["seed"] in seeds]
    done = {(r["seed"], r["learner"], r["k"]) for r in rows}
    if done:
        print(f"  resuming: {len(done)} cells already in {progress.path}", flush=True)
    for seed in seeds:
        for name, k in arms:
            if (seed, name, k) in done:
                continue
            t = time.perf_counter()
            rec = cell(bench, name, k, seed, "any" if learners.get(name).k_independent else None)
            m, probe = rec["metrics"], rec.get("probe") or {}
            rows.append(
                {
                    "seed": seed,
                    "learner": name,
                    "k": k,
                    "dice": m["dice"],
                    "pred_fraction": m["pred_fraction"],
                    "true_fraction": m["true_fraction"],
                    "fit_s": round(time.perf_counter() - t, 1),
                    "probe": json.dumps(probe, sort_keys=True),
                    "adversarial": json.dumps(rec.get("summary", {}).get("adversarial", {}), sort_keys=True),
                }
            )
            progress.add(rows[-1])
            extra = (
                f"  probe lesion {probe['before']['lesion']} -> {probe['after']['lesion']}, "
                f"background {probe['before']['background']} -> {probe['after']['background']}"
                if probe
                else ""
            )
            print(
                f"  seed {seed} k={k} {name:<26} dice {m['dice']:.3f}  pred/true {m['pred_fraction']:.4f}/"
                f"{m['true_fraction']:.4f}  {rows[-1]['fit_s']:.0f}s{extra}",
                flush=True,
            )
    outcome = judge(spec, rows, pre, args.draw)
    lines = report_lines(pre, outcome)
    for line in lines:
        print(line)
    verdict = {True: "yes", False: "no", None: "no verdict (preconditions not met)"}[outcome["holds"]]
    print(f"EXPECTED OUTCOME HOLDS: {verdict}")
    if args.out:
        write(Path(args.out), args, cfg, preset, rows, pre, outcome, lines, verdict)


class Progress:
    """Finished cells and measured preconditions of an ``--out`` run, kept as they come
    (``OUT/progress.jsonl``), so a rerun of the same command resumes; a different command
    (scenario, draw, overrides, preset) refuses the directory instead of mixing two runs."""

    def __init__(self, out: Path | None, args: argparse.Namespace, cfg: dict) -> None:
        self.path = out / "progress.jsonl" if out else None
        self.identity = {
            "scenario": args.scenario,
            "draw": args.draw,
            "overrides": args.set,
            "config": {key: cfg[key] for key in ("data", "model", "train", "learners", "control")},
        }
        self.rows: list[dict] = []
        self.preconditions: dict | None = None
        if self.path is None:
            return
        if self.path.is_file():
            lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            if lines and json.dumps(lines[0], sort_keys=True, default=str) != json.dumps(
                {"identity": self.identity}, sort_keys=True, default=str
            ):
                raise SystemExit(f"{self.path} belongs to another run (scenario, draw, overrides or preset differ)")
            for item in lines[1:]:
                if "preconditions" in item:
                    self.preconditions = item["preconditions"]
                else:
                    self.rows.append(item["cell"])
        else:
            out.mkdir(parents=True, exist_ok=True)
            self._append({"identity": self.identity})

    def _append(self, item: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(item, default=str) + "\n")

    def save_preconditions(self, pre: dict) -> None:
        if self.preconditions is None:
            self.preconditions = pre
            self._append({"preconditions": pre})

    def add(self, row: dict) -> None:
        self._append({"cell": row})


def write(
    out: Path,
    args: argparse.Namespace,
    cfg: dict,
    preset: Path,
    rows: list[dict],
    pre: dict,
    outcome: dict,
    lines: list[str],
    verdict: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "cells.csv", rows)
    command = "python -m fewshot_transfer.experiments.controls " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    code = code_version()
    frozen = preset_commit(preset)
    spec = cfg["control"]
    doc = {
        **outcome,
        "claim": spec["claim"],
        "preconditions": pre,
        "draw": args.draw,
        "data": {
            "source": cfg["data"]["source"],
            "target": cfg["data"]["target"],
            "split_seed": cfg["data"]["split"]["seed"],
        },
        "variants_tried": spec.get("variants_tried", []),
        "overrides": args.set,
        "command": command,
        "code": code,
        "preset_commit": frozen,
    }
    atomic_write_text(out / "outcome.json", json.dumps(doc, indent=2, default=float) + "\n")
    tried = spec.get("variants_tried", [])
    text = [
        f"# Positive control: {args.scenario}" + (f" — replication on data draw {args.draw}" if args.draw else ""),
        "",
        f"Claim: {spec['claim']}.",
        "",
        f"Command (from the repository root): `{command}`",
        "",
        f"Code: git `{code.get('git')}`, source hash `{code.get('source_sha')}`; preset "
        f"`configs/scenarios/{args.scenario}.toml` frozen in commit `{frozen}`"
        + (f", overrides {args.set}" if args.set else "")
        + ".",
        "",
        f"Data draw {args.draw}: source `{cfg['data']['source']}`, target `{cfg['data']['target']}`, split seed "
        f"{cfg['data']['split']['seed']}.",
        "",
        "```",
        *lines,
        f"EXPECTED OUTCOME HOLDS: {verdict}",
        "```",
        "",
        "Variants tried before the preset was frozen (each counts in the Holm family):"
        if tried
        else "No other variant was tried before the preset was frozen.",
        *[f"- {v}" for v in tried],
        "",
        "Per-cell numbers (per-class probes before/after, D accuracies) are in `cells.csv`.",
    ]
    atomic_write_text(out / "README.md", "\n".join(text) + "\n")


if __name__ == "__main__":
    main()
