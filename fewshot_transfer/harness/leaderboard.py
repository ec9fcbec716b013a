"""Cell records -> leaderboard rows: Dice with 95% CIs, paired transfer gain, cost, ranks.

Statistics follow the benchmark protocol: the unit of replication is the seed (one
support set per seed and k), so intervals are Student-t over seeds, and the transfer
gain is a *paired* difference on the same support sets: over ``scratch`` when there are
shots, over ``source-only`` at k = 0 (no target labels: the zero-shot model is the bar an
unsupervised learner must clear). Ranks are per k with ties: a learner's rank is 1 + the
number of learners significantly better than it (paired t-test over seeds, Holm-corrected
over all pairs of learners at that k, alpha 0.05), so indistinguishable learners share one.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from fewshot_transfer.harness.reproduce import reproduce_command
from fewshot_transfer.harness.selection import DEFAULTS, is_oracle, rule_label
from fewshot_transfer.harness.stats import holm, mean_ci, paired_diff, rank_with_ties
from fewshot_transfer.harness.store import atomic_write_text, write_csv
from fewshot_transfer.metrics import INFNET_KEYS
from fewshot_transfer.plan import TunedFrom
from fewshot_transfer.portable import NAME as PORTABLE
from fewshot_transfer.portable import NATIVE, modes_of
from fewshot_transfer.provenance import machines_of

log = logging.getLogger(__name__)

#: A learner is flagged "collapsed" when its predicted lesion fraction on the test set
#: falls below this share of the true fraction (the AdaptSeg failure mode).
COLLAPSE_RATIO = 0.2
BASELINE = "scratch"
#: The reference of the gain at k = 0 (no target labels).
REFERENCE_K0 = "source-only"
#: The finetune − scratch CI half-width the committed results aim for at every k.
TARGET_HALF_WIDTH = 0.05


def gain_reference(k: int) -> str:
    """The learner a gain at ``k`` is measured against."""
    return REFERENCE_K0 if k == 0 else BASELINE


def run_rule(record: dict) -> str:
    """The selection rule of the run a cell belongs to (``defaults`` for an untuned run)."""
    text = str(record.get("selection") or DEFAULTS)
    match = re.search(r"selection rule (\S+)", text)
    if match:
        return match.group(1)
    return "val" if text.startswith("tuned") else DEFAULTS  # cells from before the rules were named


def _by_rule(records: list[dict]) -> list[dict]:
    """Runs merged under several selection rules: each learner becomes ``NAME [RULE]``, so the
    rules' rows stand side by side (gains against the same rule's reference)."""
    rules = {run_rule(r) for r in records}
    if len(rules) < 2:
        return records
    return [{**r, "learner": f"{r['learner']} [{run_rule(r)}]", "run_rule": run_rule(r)} for r in records]


def _reference_of(name: str, k: int) -> str:
    """The learner a row's gain is against: the same rule's reference when rules are merged."""
    ref = gain_reference(k)
    return f"{ref} [{name.rsplit(' [', 1)[1]}" if name.endswith("]") and " [" in name else ref


def _dedupe(records: list[dict]) -> list[dict]:
    """One record per (learner, k_label, seed, replicate); later run dirs win, with a warning on conflict."""
    seen: dict[tuple, dict] = {}
    for r in records:
        key = (r["learner"], r["k_label"], r["seed"], r.get("replicate", 0))
        if key in seen and seen[key].get("provenance", {}).get("data") != r.get("provenance", {}).get("data"):
            log.warning("cell %s appears in several runs with different data; keeping %s", key, r.get("run_dir"))
        seen[key] = r
    return list(seen.values())


#: Per-cell metrics averaged over the training replicates of one episode.
_AVERAGED = ("dice", "dice_global", "pred_fraction", "true_fraction", "hd95")


def average_replicates(records: list[dict]) -> list[dict]:
    """One record per (learner, k_label, seed): the training replicates of an episode
    (``--replicates``) averaged before any pairing, so the CI is over episodes and the
    training noise of each is shrunk by the number of replicates. A failed replicate fails
    the episode's record."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["learner"], r["k_label"], r["seed"])].append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        group = sorted(group, key=lambda r: r.get("replicate", 0))
        failed = [r for r in group if r["status"] != "ok"]
        if failed:
            out.append(failed[0])
            continue
        metrics = dict(group[0]["metrics"])
        for key in _AVERAGED:
            metrics[key] = float(np.nanmean([r["metrics"][key] for r in group]))
        out.append({**group[0], "metrics": metrics, "replicates": len(group)})
    return out


def _k_columns(records: list[dict], shots: list[tuple[str, int]] | None = None) -> list[tuple[str, int]]:
    """The k columns: those of the cells plus the run's ``shots``; a run of k-independent
    learners only (source-only) with no shots known is shown at k = 0."""
    ks = {(r["k_label"], int(r["k"])) for r in records if r["k_label"] != "any"}
    ks |= {(str(label), int(k)) for label, k in shots or []}
    if not ks and any(r["k_label"] == "any" for r in records):
        ks = {("0", 0)}
    return sorted(ks, key=lambda t: (t[1], t[0]))


def _mean_of(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def budget_text(budget: dict[str, dict] | None) -> str:
    """``200 adam steps, lr 0.003, 8 target + 4 source + 8 unlabeled rows`` per target phase;
    ``none`` for a learner that trains nothing on the target side (source-only), ``not
    recorded`` for one that trained outside ``train_steps``."""
    if budget is None:
        return "not recorded"
    if not budget:
        return "none"
    parts = []
    for phase, b in (budget or {}).items():
        rows = [f"{b['target_rows']} target"]
        if b.get("source_rows"):
            rows.append(f"{b['source_rows']} source")
        if b.get("unlabeled_rows"):
            rows.append(f"{b['unlabeled_rows']} unlabeled")
        parts.append(
            (f"{phase}: " if len(budget or {}) > 1 else "")
            + f"{b['steps']} {b['optimizer']} steps, lr {b['lr']:.3g}, {' + '.join(rows)} rows/step"
        )
    return "; ".join(parts)


#: The mechanism-gain fields of a row without a control arm in the run.
_NO_MECHANISM = {
    "control": "",
    "mech": math.nan,
    "mech_lo": math.nan,
    "mech_hi": math.nan,
    "mech_p": math.nan,
    "mech_p_holm": math.nan,
}


def _mechanism_gains(rows: list[dict], by_cell: dict[tuple[str, str], dict[int, dict]]) -> None:
    """Fill each row's mechanism gain: learner − its own control arm (``learners/controls.py``),
    paired by seed, with a 95% t-CI; p-values Holm-corrected over every such test of the run."""
    tested = []
    for row in rows:
        ctl = by_cell.get((row["control"], row["k_label"]), {}) if row.get("control") else {}
        own = by_cell.get((row["learner"], row["k_label"]), {})
        seeds = sorted(s for s, r in own.items() if r["status"] == "ok" and ctl.get(s, {}).get("status") == "ok")
        if not seeds:
            continue
        d = paired_diff([own[s]["metrics"]["dice"] for s in seeds], [ctl[s]["metrics"]["dice"] for s in seeds])
        row.update(mech=d["mean"], mech_lo=d["lo"], mech_hi=d["hi"], mech_p=d.get("p_value", math.nan))
        tested.append(row)
    for row, p in zip(tested, holm([r["mech_p"] for r in tested])):
        row["mech_p_holm"] = p


def _na_row(name: str, family: str, label: str, k: int) -> dict:
    """The row of a learner that needs target labels, in the k = 0 column: not a failure."""
    nan = math.nan
    return {
        "learner": name,
        "family": family,
        "k": k,
        "k_label": label,
        "labeled_fraction": 0.0,
        "applicable": False,
        "n_seeds": 0,
        "n_failed": 0,
        "failures": "",
        "dice": nan,
        "dice_lo": nan,
        "dice_hi": nan,
        "dice_global": nan,
        "hd95": nan,
        "hd95_unit": "",
        "gain": nan,
        "gain_lo": nan,
        "gain_hi": nan,
        "gain_ci": nan,
        "gain_p": nan,
        "gain_p_holm": nan,
        "gain_ref": _reference_of(name, k),
        **_NO_MECHANISM,
        "pred_fraction": nan,
        "true_fraction": nan,
        "collapsed": False,
        "cost_s": nan,
        "charged_s": nan,
        "budget": "",
        "selection": "",
        "selection_rule": "",
        "sampler_seed": None,
        "params": {},
        "tuned_from": "",
        "protocol": None,
        "command": "",
        "seeds": [],
        **dict.fromkeys(INFNET_KEYS, nan),
    }


def _seed_mean(cells: list[dict], key: str) -> float:
    """Mean over seeds of an optional metric; NaN when a cell predates it (scored without it)."""
    values = [float(r["metrics"].get(key, math.nan)) for r in cells]
    return float(np.mean(values)) if values else math.nan


def build_rows(records: list[dict], shots: list[tuple[str, int]] | None = None) -> list[dict]:
    """Aggregate cells into one row per (learner, k); k-independent learners appear at every k,
    learners without a k = 0 cell that need target labels get an "n/a" row there."""
    records = average_replicates(_dedupe(_by_rule(records)))
    ks = _k_columns(records, shots)
    by_cell: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    learner_order: list[str] = []
    k0_capable: dict[str, bool] = {}
    family: dict[str, str] = {}
    for r in records:
        name = r["learner"]
        if name not in learner_order:
            learner_order.append(name)
        k0_capable[name] = k0_capable.get(name, False) or bool(r.get("supports_k0", r["k_label"] == "any"))
        family[name] = r.get("family", "")
        labels = [label for label, _ in ks] if r["k_label"] == "any" else [r["k_label"]]
        for label in labels:
            by_cell[(name, label)][int(r["seed"])] = r
    rows: list[dict] = []
    for label, k in ks:
        dice_by_learner: dict[str, dict[int, float]] = {}
        common_seeds: set[int] | None = None
        k_rows: list[dict] = []
        for name in learner_order:
            ref_name = _reference_of(name, k)
            reference = by_cell.get((ref_name, label), {})
            cells = by_cell.get((name, label))
            if not cells:
                if k == 0 and not k0_capable[name]:
                    rows.append(_na_row(name, family[name], label, k))
                continue
            ok = {s: r for s, r in cells.items() if r["status"] == "ok"}
            failed = {s: r for s, r in cells.items() if r["status"] != "ok"}
            seeds = sorted(ok)
            dice = [float(ok[s]["metrics"]["dice"]) for s in seeds]
            m, lo, hi = mean_ci(dice) if dice else (math.nan, math.nan, math.nan)
            gm, _, _ = mean_ci([float(ok[s]["metrics"]["dice_global"]) for s in seeds]) if seeds else (math.nan,) * 3
            pred_f = float(np.mean([ok[s]["metrics"]["pred_fraction"] for s in seeds])) if seeds else math.nan
            true_f = float(np.mean([ok[s]["metrics"]["true_fraction"] for s in seeds])) if seeds else math.nan
            hd95 = float(np.nanmean([ok[s]["metrics"]["hd95"] for s in seeds])) if seeds else math.nan
            gain = {"mean": math.nan, "lo": math.nan, "hi": math.nan, "p_value": math.nan, "n": 0}
            paired = [s for s in seeds if s in reference and reference[s]["status"] == "ok"]
            if name != ref_name and paired:
                gain = paired_diff(
                    [float(ok[s]["metrics"]["dice"]) for s in paired],
                    [float(reference[s]["metrics"]["dice"]) for s in paired],
                )
            costs = [r.get("cost") or {} for r in ok.values()]
            charged = [sum(c["charged"].values()) for c in costs if c.get("charged") is not None]
            any_rec = next(iter(cells.values()))
            first_ok = ok[seeds[0]] if seeds else any_rec
            tuned = TunedFrom.read(any_rec.get("tuned_from"))
            row = {
                "learner": name,
                "family": any_rec.get("family", ""),
                "k": k,
                "k_label": label,
                "labeled_fraction": (k / any_rec["support_pool_size"])
                if any_rec.get("support_pool_size")
                else math.nan,
                "applicable": True,
                "n_seeds": len(seeds),
                "n_failed": len(failed),
                "failures": "; ".join(f"seed {s}: {r.get('reason', '')}" for s, r in sorted(failed.items())),
                "dice": m,
                "dice_lo": lo,
                "dice_hi": hi,
                "dice_global": gm,
                "hd95": hd95,
                "hd95_unit": any_rec.get("hd95_unit", "px"),
                "gain": gain["mean"],
                "gain_lo": gain["lo"],
                "gain_hi": gain["hi"],
                "gain_ci": (gain["hi"] - gain["lo"]) / 2 if math.isfinite(gain["lo"]) else math.nan,
                "gain_p": gain.get("p_value", math.nan),
                "gain_p_holm": math.nan,
                "gain_ref": ref_name,
                **_NO_MECHANISM,
                # cells from before control arms get theirs where they are read (store.upgrade_records)
                "control": any_rec.get("control") or "",
                "pred_fraction": pred_f,
                "true_fraction": true_f,
                "collapsed": bool(seeds) and pred_f < COLLAPSE_RATIO * true_f,
                "cost_s": _mean_of([c.get("total_s") for c in costs]),
                "charged_s": _mean_of(charged),
                "budget": budget_text(first_ok.get("budget")),
                "selection": any_rec.get("selection", ""),
                "selection_rule": any_rec.get("selection_rule") or (DEFAULTS if not tuned else ""),
                "sampler_seed": any_rec.get("sampler_seed"),
                "params": dict(first_ok.get("params") or {}),
                "tuned_from": tuned.text,
                "protocol": any_rec.get("protocol"),
                "command": reproduce_command(
                    any_rec.get("run_dir", "."),
                    name,
                    label,
                    seeds or sorted(cells),
                    any_rec.get("provenance", {}).get("threads"),
                ),
                "seeds": seeds,
                **{key: _seed_mean([ok[s] for s in seeds], key) for key in INFNET_KEYS},
            }
            k_rows.append(row)
            dice_by_learner[name] = dict(zip(seeds, dice))
            common_seeds = set(seeds) if common_seeds is None else common_seeds & set(seeds)
        for row, p in zip(k_rows, holm([r["gain_p"] for r in k_rows])):
            row["gain_p_holm"] = p
        if dice_by_learner and common_seeds:
            ordered = sorted(common_seeds)
            ranks = rank_with_ties({n: [d[s] for s in ordered] for n, d in dice_by_learner.items()})
            for row in k_rows:
                row["rank"] = ranks[row["learner"]]
        rows.extend(k_rows)
    _mechanism_gains(rows, by_cell)
    return rows


def header_meta(records: list[dict]) -> dict[str, str]:
    """What every leaderboard header states: how hyperparameters were chosen, at which
    resolution the test set was scored, the machine(s) the cells ran on and their float mode
    (native or portable), and a warning when its cells come from different code versions."""
    meta: dict[str, str] = {}
    selections = sorted({r.get("selection") or "defaults" for r in records})
    meta["hyperparameters"] = selections[0] if len(selections) == 1 else "MIXED: " + " | ".join(selections)
    if any(is_oracle(str(r.get("selection_rule", ""))) for r in records):
        meta["ORACLE"] = (
            "some rows chose their hyperparameters on the TEST SET (selection `oracle`): an upper bound on what "
            "selection can buy, not a result a user could reproduce"
        )
    meta["scored at"] = scored_at(records)
    origins = sorted({str(r.get("provenance", {}).get("data", {}).get("source_labels", "manual")) for r in records})
    if origins != ["manual"]:
        sites = {
            site for r in records for site in r.get("provenance", {}).get("data", {}).get("source_sites", {}) if site
        }
        meta["source labels"] = (
            "MACHINE-LABELED source (labels made by a model, not by people: a source with label noise)"
            + (f"; sites {', '.join(sorted(sites))}" if sites else "")
            + ("" if origins == ["model"] else f" — MIXED across cells: {', '.join(origins)}")
        )
    shas = sorted({str(r.get("provenance", {}).get("code", {}).get("source_sha", "?")) for r in records})
    if len(shas) > 1:
        meta["code versions"] = (
            f"WARNING: these cells come from {len(shas)} different code versions (source_sha {', '.join(shas)}); "
            "rerun them on one version before comparing"
        )
    machines = machines_of(records)
    if machines:
        meta["machine"] = " | ".join(machines) + (
            "" if len(machines) == 1 else " — MIXED: float-level differences between CPU kernel paths"
        )
    modes = modes_of(records)
    if modes:
        meta["floats"] = (
            "MIXED: " + " | ".join(modes) + " — portable and native cells are other floats; rerun them in one mode"
            if len(modes) > 1
            else FLOAT_MODES.get(modes[0], modes[0])
        )
    return meta


#: What the header says about a float mode (``portable.float_mode``).
FLOAT_MODES = {
    NATIVE: "native (this CPU's fastest kernels: bit for bit only on the same CPU kernel path, elsewhere compare CIs)",
    PORTABLE: f"{PORTABLE} (pinned x86-64 baseline kernels: bit for bit on any x86-64 CPU with the same torch, "
    "numpy and glibc)",
}


def scored_at(records: list[dict]) -> str:
    """``native`` (each test slice at its original size), ``NxN`` (the model size), or MIXED."""
    words = {
        "native": "native resolution (each test slice at its original size)",
        "": "model size (cells from before native-resolution scoring)",
    }
    found = sorted({str(r.get("resolution", "")) for r in records if r.get("status", "ok") == "ok"})
    shown = [words.get(f, f"{f} (model size)") for f in found]
    if len(shown) > 1:
        return "MIXED: " + " | ".join(shown) + "; rerun the cells on one version before comparing"
    return shown[0] if shown else "n/a"


def power_summary(rows: list[dict]) -> str:
    """How many seeds the run used and the finetune − scratch CI half-width it bought per k."""
    seeds = sorted({r["n_seeds"] for r in rows if r.get("applicable", True) and r["n_seeds"]})
    parts = []
    for r in rows:
        if r["learner"] == "finetune" and r["gain_ref"] == BASELINE:
            half = "n/a (needs 2+ seeds)" if math.isnan(r["gain_ci"]) else f"± {r['gain_ci']:.3f}"
            parts.append(f"k={r['k_label']} {half}")
    text = f"seeds per cell: {', '.join(map(str, seeds)) or '0'}"
    if parts:
        text += f"; finetune − scratch 95% CI half-width: {', '.join(parts)} (aim: ≤ {TARGET_HALF_WIDTH} at every k)"
    return text


def fmt_ci(m: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.612 ± 0.041`` (half-width of the CI); ``n/a`` when undefined."""
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    if lo is None or math.isnan(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def fmt_mechanism(row: dict, with_name: bool = True) -> str:
    """``+0.012 ± 0.020 * (vs dual-adv-control)``: learner − its own control arm; empty without one."""
    if math.isnan(row.get("mech", math.nan)):
        return ""
    s = fmt_ci(row["mech"], row["mech_lo"], row["mech_hi"])
    s = s if s.startswith("-") else "+" + s
    if row["mech_lo"] > 0 or row["mech_hi"] < 0:
        s += " *"
    return f"{s} (vs {row['control']})" if with_name else s


def fmt_gain(row: dict) -> str:
    """``+0.052 ± 0.031 *`` (± = 95% CI half-width; ``*`` = the CI excludes 0)."""
    if not row.get("applicable", True):
        return "n/a"
    if row["learner"] == row.get("gain_ref", BASELINE):
        return "reference"
    if math.isnan(row["gain"]):
        return "—"
    s = fmt_ci(row["gain"], row["gain_lo"], row["gain_hi"])
    s = s if s.startswith("-") else "+" + s
    if math.isnan(row["gain_lo"]):
        return s + " ± n/a"
    if row["gain_lo"] > 0 or row["gain_hi"] < 0:
        s += " *"
    return s


def fmt_seconds(row: dict) -> str:
    """Seconds per cell, with the charged cached training (pretraining / meta-training) named."""
    if math.isnan(row.get("cost_s", math.nan)):
        return "n/a"
    text = f"{row['cost_s']:.1f}"
    if math.isnan(row.get("charged_s", math.nan)):
        text += "+?"
    elif row["charged_s"] > 0:
        text += f" (incl. {row['charged_s']:.1f} cached)"
    return text


def k_title(label: str, k: int) -> str:
    if k == 0:
        return f"k = {label} (no target labels; gain vs {REFERENCE_K0})"
    return f"k = {label} (gain vs {BASELINE})"


MD_HEADER = (
    "| rank | learner | k | labeled frac | Dice (mean ± 95% CI) | gain (± 95% CI) | p | p (Holm) "
    "| mechanism gain vs own control (± 95% CI) | p mech. (Holm) | global Dice | HD95 "
    "| pred / true lesion frac | seeds | s / cell | selection | target budget | notes |\n"
    "|---:|---|---:|---:|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---|---|---|\n"
)


def fmt_selection(row: dict, markdown: bool = False) -> str:
    """How a row's hyperparameters were chosen: the rule in words (``ORACLE`` in bold), with the
    sampler seed of its study."""
    token = str(row.get("selection_rule") or "")
    if not token:
        return ""
    text = rule_label(token)
    if is_oracle(token) and markdown:
        text = text.replace("ORACLE", "**ORACLE**")
    if row.get("sampler_seed") is not None:
        text += f", sampler seed {row['sampler_seed']}"
    return text


def row_notes(row: dict) -> str:
    if not row.get("applicable", True):
        return "needs labeled target shots"
    notes = []
    if row["collapsed"]:
        notes.append("**collapsed**")
    if row["n_failed"]:
        notes.append(f"{row['n_failed']} failed")
    if row["tuned_from"]:
        notes.append(f"tuned ({row['tuned_from']})")
    return ", ".join(notes)


def _p(value: float) -> str:
    return "" if value is None or math.isnan(value) else format(value, ".3g")


def _num(value: float, fmt: str) -> str:
    return "" if value is None or math.isnan(value) else format(value, fmt)


def to_markdown(
    rows: list[dict], title: str = "Leaderboard", meta: dict | None = None, sections: list[str] | None = None
) -> str:
    """Leaderboard as Markdown, grouped by k, with the reproduce command of every row."""
    out = [f"# {title}\n"]
    if meta:
        out.append("\n".join(f"- **{k}**: {v}" for k, v in meta.items()) + "\n")
    out.append(
        "\nDice = mean over lesion-positive test slices, averaged over seeds (95% Student-t CI over seeds). "
        f"Gain = learner − reference, paired by seed (same support set); the reference is {BASELINE} when there are "
        f"shots and {REFERENCE_K0} at k = 0 (no target labels); ± = 95% CI half-width, `*` = CI excludes 0; "
        "p = paired t-test, p (Holm) = Holm-corrected over the learners of that k. "
        "Mechanism gain = learner − its own control arm (the same learner and batch stream with its mechanism "
        "off: adversarial λ = 0, 0 meta-steps, unlabeled weight 0, finetune → scratch init, joint → source "
        "share 0), paired by seed; p mech. (Holm) is corrected over every mechanism-gain test of the run. At "
        "k = 0 it is the verdict on an adaptation method: continued source training alone moves the gain "
        "over source-only. "
        f"Collapsed = predicted lesion fraction < {COLLAPSE_RATIO:.0%} of the true one. "
        "Rank = 1 + number of learners significantly better (paired t-tests over seeds, Holm-corrected over all "
        "pairs of learners at that k, α = 0.05). s / cell = seconds of the cell's target training plus the "
        "charged source pretraining / meta-training (their original seconds, also when loaded from the cache; "
        "`+?` = the model cache did not record them). "
        "n/a at k = 0 = the learner needs labeled target shots.\n"
    )
    for label, k in dict.fromkeys((r["k_label"], r["k"]) for r in rows):
        sub = sorted(
            (r for r in rows if r["k_label"] == label),
            key=lambda r: (not r.get("applicable", True), r.get("rank", 99), -np.nan_to_num(r["dice"])),
        )
        out.append(f"\n## {k_title(label, k)}\n\n" + MD_HEADER)
        for r in sub:
            frac = "" if math.isnan(r["pred_fraction"]) else f"{r['pred_fraction']:.4f} / {r['true_fraction']:.4f}"
            hd = "" if math.isnan(r["hd95"]) else f"{r['hd95']:.1f} {r['hd95_unit']}"
            out.append(
                f"| {r.get('rank', '')} | {r['learner']} | {r['k']} | {r['labeled_fraction']:.3f} "
                f"| {fmt_ci(r['dice'], r['dice_lo'], r['dice_hi'])} | {fmt_gain(r)} | {_p(r['gain_p'])} "
                f"| {_p(r['gain_p_holm'])} | {fmt_mechanism(r)} | {_p(r.get('mech_p_holm', math.nan))} "
                f"| {_num(r['dice_global'], '.3f')} | {hd} | {frac} | {r['n_seeds']} "
                f"| {fmt_seconds(r)} | {fmt_selection(r, markdown=True)} | {r['budget']} | {row_notes(r)} |\n"
            )
    out.append(f"\n**Power**: {power_summary(rows)}.\n")
    out.append(selected_hyperparameters(rows))
    for text in sections or []:
        out.append("\n" + text.rstrip() + "\n")
    out.append("\n## Reproduce\n\nEach row is recomputed by:\n\n")
    for r in rows:
        if r["command"]:
            out.append(f"- {r['learner']} k={r['k_label']}: `{r['command']}`\n")
    return "".join(out)


#: Schedule keys every learner shares by protocol (``[train]``): not selected, not listed.
_SCHEDULE = ("steps", "batch_size")


def selected_hyperparameters(rows: list[dict]) -> str:
    """A Markdown section: the hyperparameters each learner ran with at each k, the rule that chose
    them and the study trial they come from (what a paper's appendix lists)."""
    shown = [r for r in rows if r.get("applicable", True) and r.get("params")]
    if not shown:
        return ""
    out = [
        "\n## Selected hyperparameters\n\n",
        "| learner | k | selection | values | from |\n|---|---:|---|---|---|\n",
    ]
    for r in sorted(shown, key=lambda r: (r["learner"], r["k"])):
        values = ", ".join(
            f"{name} {_fmt_value(v)}" for name, v in sorted(r["params"].items()) if name not in _SCHEDULE
        )
        out.append(
            f"| {r['learner']} | {r['k_label']} | {fmt_selection(r, markdown=True) or 'defaults'} | {values} "
            f"| {_study_trials(r['tuned_from']) or 'code defaults'} |\n"
        )
    return "".join(out)


def _study_trials(tuned_from: str) -> str:
    """``finetune-k5 trial #3`` for each study a row's ``tuned_from`` names (storage URL left out)."""
    return "; ".join(f"{s.study} trial #{s.trial}" for s in TunedFrom.read(tuned_from).studies)


def _fmt_value(v) -> str:
    return format(v, ".4g") if isinstance(v, float) else str(v)


def write_leaderboard(
    out_dir: Path, rows: list[dict], meta: dict | None = None, sections: list[str] | None = None
) -> list[Path]:
    """Write ``leaderboard.md``, ``.csv`` and ``.json`` atomically; returns the paths."""
    out_dir = Path(out_dir)
    md = out_dir / "leaderboard.md"
    atomic_write_text(md, to_markdown(rows, meta=meta, sections=sections))
    csv_path = out_dir / "leaderboard.csv"
    flat = [{**r, "seeds": " ".join(map(str, r["seeds"]))} for r in rows]
    write_csv(csv_path, flat)
    js = out_dir / "leaderboard.json"
    atomic_write_text(js, json.dumps({"meta": meta or {}, "rows": rows}, indent=1, default=_json_default))
    return [md, csv_path, js]


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return str(o)


def rich_table(rows: list[dict], title: str = "ftbench leaderboard"):
    """A rich Table, one row per (k, learner): Dice ± CI, gain ± CI, lesion fractions, cost.

    Long format so it stays readable in a narrow terminal or a CI log, whatever the number
    of k values; learners are sorted by Dice within each k, "n/a" rows last.
    """
    from rich.table import Table

    table = Table(
        title=title,
        caption=f"± = 95% CI half-width over seeds; * = gain CI excludes 0; reference = {BASELINE} "
        f"(k = 0: {REFERENCE_K0}); vs control = learner − its own control arm (mechanism off, same stream, "
        "paired); rank: paired t-tests, Holm-corrected; s/cell incl. charged pretraining / "
        "meta-training (+? = not recorded by this model cache)",
    )
    for col, justify in (
        ("k", "right"),
        ("rank", "right"),
        ("learner", "left"),
        ("Dice", "right"),
        ("gain vs ref.", "right"),
        ("vs control", "right"),
        ("pred/true %", "right"),
        ("n", "right"),
        ("s/cell", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)
    labels = list(dict.fromkeys((r["k_label"], r["k"]) for r in rows))
    for i, (label, _k) in enumerate(labels):
        sub = sorted(
            (r for r in rows if r["k_label"] == label),
            key=lambda r: (not r.get("applicable", True), -np.nan_to_num(r["dice"], nan=-1)),
        )
        for j, r in enumerate(sub):
            dice = fmt_ci(r["dice"], r["dice_lo"], r["dice_hi"])
            if r["collapsed"]:
                dice = f"[red]{dice} collapsed[/red]"
            elif r["n_failed"]:
                dice = f"{dice} [yellow]({r['n_failed']} failed)[/yellow]"
            mech = fmt_mechanism(r, with_name=False)
            if mech.endswith("*"):
                mech = f"[green]{mech}[/green]" if r["mech"] > 0 else f"[red]{mech}[/red]"
            gain = fmt_gain(r)
            if gain.endswith("*"):
                gain = f"[green]{gain}[/green]" if r["gain"] > 0 else f"[red]{gain}[/red]"
            frac = (
                ""
                if math.isnan(r["pred_fraction"])
                else f"{100 * r['pred_fraction']:.2f}/{100 * r['true_fraction']:.2f}"
            )
            table.add_row(
                label if j == 0 else "",
                str(r.get("rank", "")),
                r["learner"] + (" [bold red]ORACLE[/bold red]" if is_oracle(str(r.get("selection_rule", ""))) else ""),
                dice,
                gain,
                mech,
                frac,
                str(r["n_seeds"]),
                fmt_seconds(r),
                end_section=j == len(sub) - 1 and i < len(labels) - 1,
            )
    return table
