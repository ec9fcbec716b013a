"""Prediction galleries: which test slices they show, and where their pixels come from.

Every cell keeps its binary predictions of a few fixed test slices (``cells/CELL.pred.npz``:
``rows``, ``pred``). The run keeps those slices' images and ground truth once, in
``gallery.npz`` beside ``cells/`` (written with the first cell), so a report draws a
gallery from the run directory alone. Runs recorded before that file existed get the
images back from their data (``config.toml`` + ``split.json``, through the loader) when
that needs no decoding with torch; otherwise the report prints the command that
recomputes the cells into ``RUN/gallery-recompute``. No torch here: reports import this.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewshot_transfer.atomic import atomic_open
from fewshot_transfer.data.slices import SliceSet

#: The run-level file with the gallery slices' images and ground truth.
GALLERY_FILE = "gallery.npz"
#: Where the recompute command a report prints writes its cells (inside the run directory).
RECOMPUTE_DIR = "gallery-recompute"
#: At most this many test slices per gallery.
GALLERY_SLICES = 6
RULE = (
    "the median slice of each lesion-size quartile of the lesion-positive test slices, the largest lesion, "
    "and the first lesion-free test slice (false positives), in that order"
)
#: How cells chose their slices before ``gallery.npz`` recorded the rule.
LEGACY_RULE = "the largest-lesion slice of each of the 6 test patients with the largest lesions"


def choose_rows(lesion_fraction: np.ndarray) -> np.ndarray:
    """Test rows of the gallery under :data:`RULE` (small lesions to large, lesion-free first)."""
    frac = np.asarray(lesion_fraction, dtype=np.float64)
    positive = np.flatnonzero(frac > 0)
    by_size = positive[np.argsort(frac[positive], kind="stable")]
    chosen: list[int] = []
    empty = np.flatnonzero(frac == 0)
    if empty.size:
        chosen.append(int(empty[0]))
    for quartile in np.array_split(by_size, 4):
        if quartile.size:
            chosen.append(int(quartile[(quartile.size - 1) // 2]))
    if by_size.size:
        chosen.append(int(by_size[-1]))
    return np.array(list(dict.fromkeys(chosen))[:GALLERY_SLICES], dtype=np.int64)


@dataclass(frozen=True)
class GallerySlices:
    """The gallery's test slices at model size: image in [0, 1], ground truth, where from."""

    rows: np.ndarray
    image: np.ndarray
    truth: np.ndarray
    patient: np.ndarray
    lesion_fraction: np.ndarray
    rule: str
    origin: str


def slices_of(test: SliceSet, rows: np.ndarray, rule: str, origin: str) -> GallerySlices:
    """The gallery slices ``rows`` of a test set."""
    rows = np.asarray(rows, dtype=np.int64)
    return GallerySlices(
        rows=rows,
        image=test.images[rows],
        truth=test.masks[rows],
        patient=test.patients[rows].astype(str),
        lesion_fraction=test.lesion_fraction()[rows],
        rule=rule,
        origin=origin,
    )


def write_gallery(path: Path, rows: np.ndarray, test: SliceSet) -> None:
    """Save the gallery slices of ``test`` once per run (8-bit images: they are for looking at)."""
    s = slices_of(test, rows, RULE, "")
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(
            fh,
            rows=s.rows,
            image=np.round(np.clip(s.image, 0, 1) * 255).astype(np.uint8),
            truth=s.truth.astype(np.uint8),
            patient=s.patient,
            lesion_fraction=s.lesion_fraction,
            rule=np.array(RULE),
            fingerprint=np.array(str(test.fingerprint)),
        )


def read_gallery(path: Path) -> GallerySlices | None:
    """The slices stored in a run's ``gallery.npz``; None when there is none."""
    if not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return GallerySlices(
            rows=z["rows"],
            image=z["image"].astype(np.float32) / 255.0,
            truth=z["truth"],
            patient=z["patient"],
            lesion_fraction=z["lesion_fraction"],
            rule=str(z["rule"]),
            origin=str(path),
        )


def prediction_file(run_dir: Path, cell_id: str) -> Path | None:
    """A cell's stored gallery predictions: in the run, else from the recompute command's run."""
    for folder in (Path(run_dir), Path(run_dir) / RECOMPUTE_DIR):
        p = folder / "cells" / f"{cell_id}.pred.npz"
        if p.is_file():
            return p
    return None


def read_prediction(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, pred)`` of a ``.pred.npz``."""
    with np.load(path, allow_pickle=False) as z:
        return z["rows"], z["pred"]


class GalleryUnavailable(Exception):
    """The gallery slices' images cannot be had without training or torch; the message says why."""


def gallery_slices(run_dir: Path, rows: np.ndarray) -> GallerySlices:
    """The images and ground truth of test ``rows`` of a run, from ``gallery.npz`` (the run's or
    the recompute run's), else from the run's data when loading it needs no torch."""
    for folder in (Path(run_dir), Path(run_dir) / RECOMPUTE_DIR):
        stored = read_gallery(folder / GALLERY_FILE)
        if stored is not None and np.array_equal(stored.rows, rows):
            return stored
    return _from_data(Path(run_dir), np.asarray(rows, dtype=np.int64))


def _from_data(run_dir: Path, rows: np.ndarray) -> GallerySlices:
    from fewshot_transfer.config import load_toml
    from fewshot_transfer.data.errors import DatasetError
    from fewshot_transfer.data.loader import decoded_in_cache, load_run_domain
    from fewshot_transfer.data.splits import load_split
    from fewshot_transfer.plan import DataPlan

    config_path, split_path = run_dir / "config.toml", run_dir / "split.json"
    if not (config_path.is_file() and split_path.is_file()):
        raise GalleryUnavailable(f"{run_dir} has no config.toml and split.json to find its test slices with")
    data = DataPlan.from_table(load_toml(config_path)["data"])
    spec = data.target
    if not spec.startswith("phantom:") and not decoded_in_cache(data):
        raise GalleryUnavailable(
            f"the target {spec} is not decoded at data.size {data.size} in this machine's cache "
            "(decoding it resizes with torch, which a report does not import)"
        )
    try:
        target = load_run_domain(data, "target")
        split = load_split(split_path)
        test = split.pools(target)["test"]
    except (DatasetError, ValueError, OSError) as exc:
        raise GalleryUnavailable(f"the run's target data cannot be loaded here ({exc})") from exc
    if rows.size and rows.max() >= len(test):
        raise GalleryUnavailable(f"the stored rows do not fit the test set of {spec} ({len(test)} slices)")
    rule = RULE if np.array_equal(rows, choose_rows(test.lesion_fraction())) else LEGACY_RULE
    return slices_of(test, rows, rule, f"{spec}, test patients of {split_path} (loaded for this report)")


def recompute_command(run_dir: Path, learners: list[str], k_label: str, seed: int, threads: int | None) -> str:
    """Shell commands that recompute the cells of one gallery into ``RUN/gallery-recompute``
    (same config and split, so the same cells: a report of RUN then finds their predictions)."""
    out = Path(run_dir) / RECOMPUTE_DIR
    pin = f" --set run.threads={threads}" if threads else ""
    shots = k_label if k_label != "any" else "0"
    return (
        f"mkdir -p {shlex.quote(str(out))} && cp {shlex.quote(str(Path(run_dir) / 'split.json'))} "
        f"{shlex.quote(str(out))}/ && ftbench run --config {shlex.quote(str(Path(run_dir) / 'config.toml'))} "
        f"--learners {','.join(learners)} --shots {shlex.quote(shots)} --seeds {seed},{pin} --controls none "
        f"--out {shlex.quote(str(out))}"
    )
