"""What ``ftbench data info`` shows: a dataset's size, labels, splits, lesion burden and warnings.

The numbers come from the loaded (cached) SliceSet, so lesion fractions are measured
on the resized slices the learners see. Warnings point at what would make a benchmark
number untrustworthy: unknown patients (slices of one scan may land in both support and
test), patients in two official splits, an intensity convention that does not fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fewshot_transfer.data.loader import label_origin, load_domain
from fewshot_transfer.data.slices import SliceSet

if TYPE_CHECKING:
    from rich.console import Console

PATIENTS_UNKNOWN = (
    "patients unknown: each slice is its own group, so slices of one scan can land in both the "
    "support pool and the test set; treat results as optimistic"
)


@dataclass
class SplitInfo:
    patients: int
    slices: int
    labeled: int
    positive: int


@dataclass
class DatasetInfo:
    """Summary of one dataset (see :func:`describe`)."""

    name: str
    source: str
    fingerprint: str
    size: int
    slices: int
    patients: int
    labeled: int
    unlabeled: int
    slices_per_patient: tuple[int, float, int]
    positive_share: float
    lesion_fraction: dict[str, float]
    splits: dict[str, SplitInfo]
    intensity: str
    row_intensity: dict[str, int]
    window: tuple[float, float]
    lesion_labels: list[int]
    labels: dict[str, str]
    spacing_mm: list[float] | None
    native_shapes: dict[str, int]
    has_lungs: bool
    patients_known: bool
    description: str = ""
    warnings: list[str] = field(default_factory=list)
    #: Per dataset of origin when several datasets form this domain (``--source A,B``); else empty.
    datasets: dict[str, SplitInfo] = field(default_factory=dict)
    #: Who made the labels: "manual" (people), "model" (machine-made), "manual+model" (a union).
    label_origin: str = "manual"
    #: ``{site: {"slices", "patients"}}`` from the manifest's ``site`` column; empty without one.
    sites: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def describe(spec: str | Path, *, size: int = 64, cache_dir: Path | None = None) -> DatasetInfo:
    """Load ``spec`` (dataset folder or ``phantom:<domain>``) and summarize it."""
    return summarize(load_domain(str(spec), size=size, cache_dir=cache_dir))


def summarize(data: SliceSet) -> DatasetInfo:
    """Summary of a loaded SliceSet (uses ``meta`` written by the loader when present)."""
    meta = data.meta or {}
    ds = meta.get("dataset", {})
    fractions = data.lesion_fraction()
    labeled = data.labeled.astype(bool)
    positive = labeled & (fractions > 0)
    pos_fractions = fractions[positive]
    counts = np.unique(data.patients, return_counts=True)[1] if len(data) else np.array([0])
    splits: dict[str, SplitInfo] = {}
    for split in sorted(set(data.splits.tolist())):
        rows = data.splits == split
        splits[split or "(none)"] = SplitInfo(
            patients=len(set(data.patients[rows].tolist())),
            slices=int(rows.sum()),
            labeled=int((rows & labeled).sum()),
            positive=int((rows & positive).sum()),
        )
    lesion = {"mean_labeled": float(fractions[labeled].mean()) if labeled.any() else float("nan")}
    if pos_fractions.size:
        for q in (10, 25, 50, 75, 90):
            lesion[f"p{q}_positive"] = float(np.percentile(pos_fractions, q))
    origins: dict[str, SplitInfo] = {}
    if data.dataset is not None:
        for origin in dict.fromkeys(data.dataset.tolist()):
            rows = data.dataset == origin
            origins[origin] = SplitInfo(
                patients=len(set(data.patients[rows].tolist())),
                slices=int(rows.sum()),
                labeled=int((rows & labeled).sum()),
                positive=int((rows & positive).sum()),
            )
    source = str(meta.get("source", ""))
    if "combined" in meta:
        source = " + ".join(f"{c['name']} ({c['source'] or 'generated'})" for c in meta["combined"])
    info = DatasetInfo(
        name=data.name,
        source=source,
        fingerprint=data.fingerprint,
        size=int(data.shape[0]) if len(data) else 0,
        slices=len(data),
        patients=len(data.patient_ids()),
        labeled=int(labeled.sum()),
        unlabeled=int((~labeled).sum()),
        slices_per_patient=(int(counts.min()), float(np.median(counts)), int(counts.max())),
        positive_share=float(positive.sum() / labeled.sum()) if labeled.any() else float("nan"),
        lesion_fraction=lesion,
        splits=splits,
        intensity=str(ds.get("intensity", "hu")),
        row_intensity=dict(meta.get("row_intensity", {})),
        window=tuple(ds.get("window", (-1250.0, 250.0))),
        lesion_labels=list(ds.get("lesion_labels", [1])),
        labels={str(k): str(v) for k, v in ds.get("labels", {}).items()},
        spacing_mm=meta.get("native_spacing_mm") or ds.get("spacing_mm"),
        native_shapes=dict(meta.get("native_shapes", {})),
        has_lungs=data.lungs is not None,
        patients_known=bool(ds.get("patients_known", True)),
        description=str(ds.get("description", "")),
        datasets=origins,
        label_origin=label_origin(data),
        sites=dict(meta.get("sites", {})),
    )
    info.warnings = _warnings(data, info, meta)
    return info


def _warnings(data: SliceSet, info: DatasetInfo, meta: dict) -> list[str]:
    out = [w["message"] for w in meta.get("warnings", [])]
    if not info.patients_known:
        out.append(PATIENTS_UNKNOWN)
    elif info.patients > 1 and info.slices_per_patient[2] == 1:
        out.append(
            "every patient has exactly one slice; if slices share scans, patient-disjoint splits cannot be trusted"
        )
    split_of: dict[str, set[str]] = {}
    for patient, split in zip(data.patients.tolist(), data.splits.tolist()):
        if split in ("train", "test"):
            split_of.setdefault(patient, set()).add(split)
    crossing = sorted(p for p, s in split_of.items() if len(s) > 1)
    if crossing:
        out.append(
            f"{len(crossing)} patient(s) have slices in both train and test (e.g. {crossing[:3]}): the official split leaks"
        )
    if "model" in info.label_origin.split("+"):
        out.append(
            "labels made by a model, not by people: a source with label noise; leaderboards that train on it "
            "say so (and if that model saw your target's test slices, gains on them are optimistic)"
        )
    if info.labeled == 0:
        out.append("no labeled slices: usable only as unlabeled data")
    elif info.positive_share == 0:
        out.append("no labeled slice contains lesion: check lesion_labels in dataset.json")
    if info.spacing_mm is None:
        out.append("pixel spacing unknown: distances (HD95) will be in pixels")
    return out


def render(info: DatasetInfo, console: Console | None = None) -> None:
    """Print ``info`` as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"dataset {info.name}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    lf = info.lesion_fraction
    rows = [
        ("source", info.source),
        ("description", info.description),
        ("fingerprint", info.fingerprint),
        ("patients", f"{info.patients}" + ("" if info.patients_known else " (unknown: one group per slice)")),
        ("slices", f"{info.slices} at {info.size}x{info.size} ({info.labeled} labeled, {info.unlabeled} unlabeled)"),
        ("slices / patient", "min {} / median {:g} / max {}".format(*info.slices_per_patient)),
        (
            "native sizes",
            ", ".join(f"{k} ({v})" for k, v in sorted(info.native_shapes.items(), key=lambda kv: -kv[1])[:4]),
        ),
        (
            "intensity",
            f"{info.intensity} (window {info.window[0]:g}..{info.window[1]:g} HU)" + _mixed(info.row_intensity),
        ),
        ("label origin", _origin(info.label_origin)),
        ("lesion labels", ", ".join(f"{v} {info.labels.get(str(v), '')}".strip() for v in info.lesion_labels)),
        (
            "other labels",
            ", ".join(f"{k} {v}" for k, v in info.labels.items() if int(k) not in info.lesion_labels) or "-",
        ),
        ("spacing (row, col)", _spacing(info.spacing_mm)),
        ("lung masks", "yes" if info.has_lungs else "no"),
        ("lesion-positive slices", _pct(info.positive_share) + " of labeled" if info.labeled else "-"),
        (
            "lesion fraction",
            (
                f"median {_pct(lf['p50_positive'])} (p10 {_pct(lf['p10_positive'])}, p90 {_pct(lf['p90_positive'])}) "
                f"of positive slices; mean {_pct(lf['mean_labeled'])} over labeled"
            )
            if "p50_positive" in lf
            else "-",
        ),
    ]
    for key, value in rows:
        if value:
            table.add_row(key, value)
    console.print(table)
    for title, first, groups in (("datasets of origin", "dataset", info.datasets), ("splits", "split", info.splits)):
        if not groups:
            continue
        table = Table(title=title, title_justify="left")
        for col in (first, "patients", "slices", "labeled", "lesion-positive"):
            table.add_column(col, justify="left" if col == first else "right")
        for name, s in groups.items():
            table.add_row(name, str(s.patients), str(s.slices), str(s.labeled), str(s.positive))
        console.print(table)
    if info.sites:
        table = Table(title="sites", title_justify="left")
        for col in ("site", "patients", "slices"):
            table.add_column(col, justify="left" if col == "site" else "right")
        for name, n in info.sites.items():
            table.add_row(name or "(none)", str(n["patients"]), str(n["slices"]))
        console.print(table)
    for warning in info.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


def _origin(origin: str) -> str:
    words = {"manual": "manual (drawn by people)", "model": "model (machine-made labels)"}
    return words.get(origin, f"{origin} (a union of manual and machine-made labels)")


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _mixed(row_intensity: dict[str, int]) -> str:
    if len(row_intensity) < 2:
        return ""
    return "; per manifest row: " + ", ".join(f"{n} {k}" for k, n in sorted(row_intensity.items()))


def _spacing(spacing_mm: list[float] | None) -> str:
    if spacing_mm is None:
        return "unknown"
    return " x ".join(f"{v:.3g}" for v in spacing_mm) + " mm (native)"
