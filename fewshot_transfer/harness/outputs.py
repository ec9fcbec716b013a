"""Render a run directory (or several merged) into leaderboard files, plots and a terminal table."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from fewshot_transfer.config import load_toml
from fewshot_transfer.harness import metric_sets
from fewshot_transfer.harness.leaderboard import build_rows, header_meta, power_summary, rich_table, write_leaderboard
from fewshot_transfer.harness.plots import loss_curves_plot, prediction_gallery, transfer_gain_plot
from fewshot_transfer.harness.report import render_sections
from fewshot_transfer.harness.store import load_records, pool_folds

log = logging.getLogger(__name__)


def saved_shots(run_dirs: list[Path]) -> list[tuple[str, int]]:
    """The plain-count k columns (``0``, ``5`` ...) the runs' ``config.toml`` asked for, so a run of
    k-independent learners alone still renders in its columns (others come from the cells)."""
    out: list[tuple[str, int]] = []
    for d in run_dirs:
        cfg = Path(d) / "config.toml"
        if cfg.is_file():
            for item in str(load_toml(cfg).get("run", {}).get("shots", "")).split(","):
                if item.strip().isdigit():
                    out.append((item.strip(), int(item)))
    return out


def saved_metric_sets(run_dirs: list[Path]) -> list[str]:
    """The metric sets (``[eval] metrics``) the runs' ``config.toml`` asked to show."""
    out: list[str] = []
    for d in run_dirs:
        cfg = Path(d) / "config.toml"
        if cfg.is_file():
            out.extend(load_toml(cfg).get("eval", {}).get("metrics", []))
    return list(dict.fromkeys(out))


def render(
    run_dirs: list[Path],
    out_dir: Path,
    *,
    meta: dict | None = None,
    console=None,
    shots: list[tuple[str, int]] | None = None,
    metrics: list[str] | None = None,
    folds: bool = False,
) -> list[dict]:
    """Merge the cells of ``run_dirs``; write leaderboard.{md,csv,json} + transfer_gain.png to ``out_dir``.

    ``shots`` are the grid's k columns (default: those saved with the runs); ``metrics`` the
    extra metric sets shown beside Dice at 0.5 (default: those saved with the runs); ``folds``:
    the runs are the folds of one cross-validation, pooled with (fold, seed) as the unit
    (:func:`~fewshot_transfer.harness.store.pool_folds`).
    """
    shown = metric_sets.check_names(metrics if metrics is not None else saved_metric_sets(run_dirs))
    records = load_records(run_dirs)
    if not records:
        raise ValueError(f"no finished cells in {', '.join(map(str, run_dirs))}; run `ftbench run` first")
    units = ""
    if folds:
        records, units = pool_folds(run_dirs, records)
    rows = build_rows(records, shots if shots is not None else saved_shots(run_dirs))
    out_dir.mkdir(parents=True, exist_ok=True)
    header = header_meta(records)  # recomputed from the cells, never taken from an older render
    if units:
        header["pairing unit"] = units
    meta = {
        **header,
        **{k: v for k, v in (meta or {}).items() if k not in ("hyperparameters", "code versions", "scored at")},
    }
    extra = {name: metric_sets.markdown(rows, name) for name in shown}
    sections = render_sections(rows, records) + [text for text in extra.values() if text]
    paths = write_leaderboard(out_dir, rows, meta=meta, sections=sections)
    paths.append(transfer_gain_plot(rows, out_dir / "transfer_gain.png"))
    if console is not None:
        console.print(
            rich_table(
                rows,
                title=f"ftbench leaderboard — hyperparameters: {meta['hyperparameters']}; scored at: {meta['scored at']}",
            )
        )
        if "code versions" in meta:
            console.print(f"[yellow]{meta['code versions']}[/yellow]")
        for name, text in extra.items():
            if text is None:
                console.print(
                    f"[yellow]no cell here stores the {name!r} metrics (scored before the set existed; "
                    "the stored .pred.npz are binary gallery masks): rerun the cells to get them[/yellow]"
                )
            else:
                console.print(metric_sets.rich_table(rows, name))
        console.print(power_summary(rows))
        console.print("wrote " + ", ".join(str(p) for p in paths))
    return rows


def render_gallery(bench, records: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per k: a few test slices with ground truth and every learner's prediction (first seed)."""
    from fewshot_transfer.harness.runner import gallery_rows

    rows = gallery_rows(bench)
    if rows.size == 0:
        return []
    seed = min(r["seed"] for r in records)
    by_k: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    labels = [label for label, _ in bench.shots]
    for r in sorted(records, key=lambda r: r["learner"]):
        if r["seed"] != seed or r["status"] != "ok":
            continue
        p = bench.out_dir / "cells" / f"{r['cell_id']}.pred.npz"
        if not p.is_file():
            continue
        with np.load(p) as z:
            if not np.array_equal(z["rows"], rows):
                continue
            pred = z["pred"]
        for label in labels if r["k_label"] == "any" else [r["k_label"]]:
            by_k[label][r["learner"]] = pred
    out = []
    test = bench.test_set
    for label in labels:
        if by_k.get(label):
            path = out_dir / f"gallery_k-{label.replace('%', 'pct')}.png"
            out.append(
                prediction_gallery(
                    test.images[rows], test.masks[rows], by_k[label], path, title=f"k = {label}, seed {seed}"
                )
            )
    return out


def render_curves(run_dir: Path) -> list[Path]:
    """A loss-curve PNG next to every cell's curves CSV."""
    out = []
    for csv_path in sorted((run_dir / "cells").glob("*.curves.csv")):
        out.append(loss_curves_plot(csv_path, csv_path.with_suffix("").with_suffix(".curves.png")))
    return out
