"""Run learners x k x seeds on paired support sets; store every finished cell at once.

The grid is ordered seed-major so a seed's source pretraining (cached on disk) is reused by
every learner and k that starts from it. A cell that exists on disk is skipped, which is
what makes an interrupted run resume where it stopped. A cell whose loss turns NaN/Inf is
recorded as failed with its reason, and the grid continues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch

from fewshot_transfer import learners
from fewshot_transfer.adaptation.probe import class_probe
from fewshot_transfer.atomic import atomic_open
from fewshot_transfer.data.slices import SliceSet
from fewshot_transfer.harness.benchmark import Benchmark
from fewshot_transfer.harness.gallery import GALLERY_FILE, choose_rows, read_gallery, write_gallery
from fewshot_transfer.harness.parallel import producers_first, resolve_jobs, run_parallel
from fewshot_transfer.harness.reproduce import reproduce_command
from fewshot_transfer.harness.store import CellSpec, CellStore, write_csv
from fewshot_transfer.metrics import evaluate, hd95_unit, infnet_metrics
from fewshot_transfer.portable import float_mode
from fewshot_transfer.provenance import code_version, machine
from fewshot_transfer.training import ProgressCallback, TrainingDiverged
from fewshot_transfer.training.segmenter import resample_proba

log = logging.getLogger(__name__)

#: Bump when evaluation changes; leaderboards mark rows computed under an older protocol.
#: 2: test slices scored at their original resolution; a dataset's own unlabeled patients
#: are the unlabeled pool (all labeled training patients go to the support pool); folds.
PROTOCOL_VERSION = 2


def plan_cells(
    bench: Benchmark,
    learner_names: list[str],
    seeds: list[int],
    only_at: dict[str, set[int]] | None = None,
    replicates: int = 1,
) -> list[CellSpec]:
    """All cells of the grid, seed-major. k-independent learners get one cell per seed; at
    k = 0 only learners with ``supports_k0`` get a cell (the others are "n/a" there).
    ``only_at`` restricts some rows (control arms) to the k they are needed at; each cell is
    trained ``replicates`` times on its episode (the leaderboard averages them per seed)."""
    cells: list[CellSpec] = []
    for seed in seeds:
        for name in learner_names:
            cls = learners.get(name)
            if cls.k_independent:
                cells.append(CellSpec(seed=seed, k=0, k_label="any", learner=name))
                continue
            for label, k in bench.shots:
                if k == 0 and not cls.supports_k0:
                    continue
                if only_at and name in only_at and k not in only_at[name]:
                    continue
                cells.append(CellSpec(seed=seed, k=k, k_label=label, learner=name))
    if replicates > 1:
        cells = [replace(c, replicate=r) for c in cells for r in range(replicates)]
    order = {n: i for i, n in enumerate(learner_names)}
    return sorted(cells, key=lambda c: (c.seed, c.replicate, c.k, order[c.learner]))


#: The ``train_steps`` phase of source pretraining: a cached, k-independent cost charged
#: through the model cache, not part of the cell's target budget.
PRETRAIN_PHASE = "pretrain"


def target_budget(ctx) -> dict[str, dict]:
    """The target-side phases a cell trained (``ctx.budget`` minus cached pretraining), with the
    batch composition per step: ``batch_size`` target rows when there are shots, the rest of
    the labeled rows from the source, plus the unlabeled (extra) rows."""
    out: dict[str, dict] = {}
    target_rows = int(ctx.params.get("batch_size", 0)) if ctx.k > 0 else 0
    for phase, b in ctx.budget.items():
        if phase == PRETRAIN_PHASE:
            continue
        labeled = int(b["labeled_rows"])
        tgt = min(labeled, target_rows)
        out[phase] = {**b, "target_rows": tgt, "source_rows": labeled - tgt, "unlabeled_rows": int(b["extra_rows"])}
    return out


def cell_cost(budget: dict[str, dict] | None, charged: dict[str, float] | None, unrecorded_s: float = 0.0) -> dict:
    """Seconds of the cell's own target training plus the charged cached trainings (source
    pretraining, meta-training: their original seconds, also on a cache hit).

    ``budget`` None = the learner trained outside ``train_steps``; its training seconds are
    then ``unrecorded_s`` (what the learner reported in ``ctx.train_seconds``).
    """
    own = float(sum(b["seconds"] for b in budget.values())) if budget is not None else float(unrecorded_s)
    extra = float(sum((charged or {}).values()))
    return {"target_s": own, "charged": charged, "total_s": own + extra, "recorded": budget is not None}


def run_cell(bench: Benchmark, spec: CellSpec, callback: ProgressCallback | None = None) -> dict:
    """Fit one learner on one support set and evaluate it on the whole test set; what the cell
    trains with and is labelled with is its entry in the run's plan."""
    cls = learners.get(spec.learner)
    entry = bench.cell_plan(cls, spec.k, spec.k_label)
    ctx = bench.context(cls, spec.k, spec.seed, callback, replicate=spec.replicate, k_label=spec.k_label)
    bench.cache.begin_cell()
    record: dict = {
        "cell_id": spec.cell_id,
        "learner": spec.learner,
        "family": entry.family,
        "supports_k0": bool(cls.supports_k0 or cls.k_independent),
        "control": entry.control,
        "control_of": entry.control_of,
        "selection": bench.plan.run.selection_text,
        "selection_rule": entry.selection_rule,
        "sampler_seed": entry.tuned_from.sampler_seed,
        "k": spec.k,
        "k_label": spec.k_label,
        "seed": spec.seed,
        "replicate": spec.replicate,
        "labeled_fraction": bench.labeled_fraction(spec.k),
        "unlabeled_rows": len(ctx.unlabeled) if cls.uses_unlabeled else 0,
        "support_pool_size": bench.eligible,
        "support_patients": sorted(set(ctx.support.patients.tolist())),
        "params": dict(ctx.params),
        "tuned_from": entry.tuned_from.to_json() or None,
        "protocol": PROTOCOL_VERSION,
        "provenance": {
            "config_hash": bench.plan.config_hash,
            "code": code_version(),
            "machine": machine(),
            "float_mode": float_mode(),
            "data": bench.data_fingerprint,
            "device": str(bench.device),
            "threads": torch.get_num_threads(),
        },
        "command": reproduce_command(bench.out_dir, spec.learner, spec.k_label, [spec.seed], torch.get_num_threads()),
    }
    torch.manual_seed(ctx.seed)
    t0 = time.perf_counter()
    learner = cls()
    try:
        segmenter = learner.fit(ctx)
    except TrainingDiverged as exc:
        record.update(
            status="failed", reason=str(exc), timing={"fit_s": time.perf_counter() - t0, "train_s": ctx.train_seconds}
        )
        _save_curves(bench, spec, ctx.curves)
        return record
    fit_s = time.perf_counter() - t0
    probe = domain_probes(bench, learner, ctx, segmenter.model)
    if probe is not None:
        record["probe"] = probe
    # A learner with shots whose training left no target phase trained outside train_steps:
    # its budget is unknown, not empty.
    budget: dict | None = target_budget(ctx)
    if not budget and ctx.k > 0:
        budget = None
    charged = dict(bench.cache.cell_costs())
    record.update(budget=budget, cost=cell_cost(budget, charged, ctx.train_seconds), summary=ctx.summary)
    t1 = time.perf_counter()
    test = bench.test_set
    summary, per_slice, pred, spacing = score(segmenter, test, bench.plan.train.threshold)
    eval_s = time.perf_counter() - t1
    record.update(
        status="ok",
        resolution=bench.resolution,
        metrics=summary,
        hd95_unit=hd95_unit(spacing, len(test)),
        per_slice={
            "patient": test.patients.tolist(),
            "dice": [row.get("dice", float("nan")) for row in per_slice],
        },
        timing={"fit_s": fit_s, "train_s": ctx.train_seconds, "eval_s": eval_s},
    )
    _save_curves(bench, spec, ctx.curves)
    _save_gallery(bench, spec, pred)
    return record


#: Slices per domain a domain probe reads (lesion-positive first; half fit it, half score it).
PROBE_SLICES = 24


def _probe_slices(data: SliceSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to :data:`PROBE_SLICES` slices as (images, masks) ``[B, 1, H, W]``, lesion-positive first."""
    order = np.argsort(-(data.masks.reshape(len(data), -1).sum(1) > 0).astype(int), kind="stable")[:PROBE_SLICES]
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a[order])).unsqueeze(1).to(device, torch.float32)  # noqa: E731
    return to(data.images), to(data.masks)


def probe_reading(
    bench: Benchmark, learner, ctx, model: torch.nn.Module, pair: tuple[SliceSet, SliceSet] | None = None
) -> tuple[str, dict]:
    """(layer, per-class domain probe) of ``model`` at the layer ``learner`` aligns
    (``adaptation/probe.py``).

    Source validation slices against test slices, with their masks: the masks only say which
    positions are lesion for this diagnostic read-out, like Dice itself; no learner sees them.
    ``pair`` reads two other slice sets instead (e.g. two patient groups of one domain: the
    probe's null reading, what patient-to-patient variation alone separates)."""
    first, second = pair or (bench.source_val, bench.test_set)
    src, tgt = _probe_slices(first, ctx.device), _probe_slices(second, ctx.device)
    layer, read = learner.aligned(ctx, model.eval())
    return layer, class_probe(read, src, tgt, seed=ctx.seed)


def domain_probes(bench: Benchmark, learner, ctx, model: torch.nn.Module) -> dict | None:
    """:func:`probe_reading` before (the source model) and after adaptation; None for learners
    that align nothing or run with ``probe = false``."""
    if getattr(learner, "aligned", None) is None or not ctx.params.get("probe", False):
        return None
    layer, after = probe_reading(bench, learner, ctx, model)
    _, before = probe_reading(bench, learner, ctx, ctx.source_model())
    return {"layer": layer, "before": before, "after": after}


def score(segmenter, test: SliceSet, threshold: float) -> tuple[dict, list[dict], np.ndarray, np.ndarray]:
    """Metrics of ``segmenter`` on ``test``: (summary, per-slice rows, model-size masks, spacing used).

    When ``test`` carries its original masks (``test.native``), each slice is scored at its
    original size: the probability map is resampled bilinearly to it and thresholded, and
    compared with the original mask, HD95 with the original spacing. Otherwise (and for a slice
    whose original size is the model size, e.g. every phantom slice) the model-size mask is
    scored as it is. The model-size masks are returned for galleries. The summary also holds
    the Inf-Net metric set (:func:`~fewshot_transfer.metrics.infnet_metrics`, ``infnet_*``),
    scored on the same probability maps at the same (native) resolution.
    """
    proba = segmenter.predict_proba(test.images)
    thr = float(getattr(segmenter, "threshold", threshold))
    pred = (proba >= thr).astype(np.uint8)
    if test.native is None:
        summary, per_slice = evaluate(pred, test.masks, test.spacing)
        return _with_infnet(summary, list(proba), list(test.masks)), per_slice, pred, test.spacing
    spacing = np.array([s.spacing for s in test.native], dtype=np.float64).reshape(-1, 2)
    gts = [s.mask for s in test.native]
    if all(s.shape == test.shape for s in test.native):
        gt = np.stack(gts) if len(test) else test.masks
        summary, per_slice = evaluate(pred, gt, spacing if len(test) else test.spacing)
        return _with_infnet(summary, list(proba), gts), per_slice, pred, spacing
    native_proba = resample_proba(proba, [s.shape for s in test.native])
    summary, per_slice = evaluate([(p >= thr).astype(np.uint8) for p in native_proba], gts, spacing)
    return _with_infnet(summary, native_proba, gts), per_slice, pred, spacing


def _with_infnet(summary: dict, proba: list[np.ndarray], gts: list[np.ndarray]) -> dict:
    return {**summary, **infnet_metrics(proba, gts)} if proba else summary


def gallery_rows(bench: Benchmark) -> np.ndarray:
    """Fixed test rows for galleries (``harness/gallery.py``: lesion-size quartiles, the largest
    lesion, a lesion-free slice)."""
    return choose_rows(bench.test_set.lesion_fraction())


def _save_gallery(bench: Benchmark, spec: CellSpec, pred: np.ndarray) -> None:
    """The cell's predictions of the gallery slices, and once per run their images and truth."""
    rows = gallery_rows(bench)
    stored = read_gallery(bench.out_dir / GALLERY_FILE)
    if stored is None or not np.array_equal(stored.rows, rows):
        write_gallery(bench.out_dir / GALLERY_FILE, rows, bench.test_set)
    with atomic_open(bench.out_dir / "cells" / f"{spec.cell_id}.pred.npz", "wb") as fh:
        np.savez_compressed(fh, rows=rows, pred=pred[rows].astype(np.uint8))


def _save_curves(bench: Benchmark, spec: CellSpec, curves) -> None:
    if curves.rows:
        write_csv(bench.out_dir / "cells" / f"{spec.cell_id}.curves.csv", curves.rows, curves.columns())


def run_grid(
    bench: Benchmark,
    cells: Iterable[CellSpec],
    *,
    store: CellStore | None = None,
    on_cell: Callable[[CellSpec, dict], None] | None = None,
    retry_failed: bool = False,
    show_progress: bool = True,
    jobs: int = 1,
) -> list[dict]:
    """Run the missing cells with a rich progress display; returns all records of the grid.

    ``jobs > 1`` runs cells in that many worker processes (``harness/parallel.py``), each
    single-threaded unless ``run.threads`` says otherwise; they save into this run
    directory's cell store. Records do not depend on ``jobs`` at equal thread counts.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    store = store or CellStore(bench.out_dir)
    cells = list(cells)
    todo = []
    for c in cells:
        rec = store.load(c)
        if rec is None or (retry_failed and rec.get("status") == "failed"):
            todo.append(c)
    if len(todo) < len(cells):
        log.info("resuming: %d of %d cells already done", len(cells) - len(todo), len(cells))
    jobs = resolve_jobs(jobs, len(todo))
    if jobs > 1 and store.root != CellStore(bench.out_dir).root:
        raise ValueError("parallel cells are saved into the run directory's own cell store")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=False,
    ) as progress:
        task = progress.add_task("grid", total=len(todo))

        def finished(spec: CellSpec, record: dict) -> None:
            if record["status"] != "ok":
                log.warning("cell %s failed: %s", spec.cell_id, record.get("reason"))
            if on_cell:
                on_cell(spec, record)
            progress.advance(task)

        if jobs == 1:
            for spec in todo:
                progress.update(task, description=_label(spec))
                bench.cache.begin_cell()
                record = run_cell(bench, spec)
                store.save(spec, record)
                finished(spec, record)
        else:
            running: dict[CellSpec, None] = {}

            def on_event(kind: str, spec: CellSpec, payload) -> None:
                if kind == "start":
                    running[spec] = None
                else:
                    running.pop(spec, None)
                    hits, misses = payload["cache"]
                    bench.cache.hits += hits
                    bench.cache.misses += misses
                    finished(spec, payload["record"])
                progress.update(task, description=f"{jobs} jobs: " + " | ".join(_label(s) for s in running))

            threads = bench.plan.run.threads or 1
            run_parallel(
                bench.plan,
                bench.out_dir,
                producers_first(todo),
                run_cell=run_cell,
                jobs=jobs,
                device=str(bench.device),
                threads=threads,
                on_event=on_event,
            )
    return [r for r in (store.load(c) for c in cells) if r is not None]


def _label(spec: CellSpec) -> str:
    return f"{spec.learner} k={spec.k_label} seed={spec.seed}"
