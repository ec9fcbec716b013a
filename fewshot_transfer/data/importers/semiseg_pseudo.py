"""COVID-SemiSeg's pseudo-labeled slices as a labeled, machine-labeled *source* dataset.

``TrainingSet/LungInfection-Train/Pseudo-label/{Imgs/*.jpg, GT/*.png}`` of the Inf-Net
``Dataset/`` folder: 1600 axial slices of the 20 COVID-19-CT-Seg volumes, labeled by a
model (Semi-Inf-Net), not by a radiologist. What the import records, and why:

* ``label_origin: "model"`` in dataset.json: the labels are a model's outputs (label noise),
  and that model was trained on the 50 doctor-labeled development slices, so a benchmark
  that uses this source on development folds is optimistic; every leaderboard trained on it
  says so.
* ``site`` per slice: ``coronacases`` (coronacases.org, 10 volumes) or ``radiopaedia``
  (Radiopaedia, 10 volumes), two collections from other hospitals and scanners, usable as
  two independent sources (``--site coronacases`` imports one).
* ``patient`` = the scan's case: the file name is ``Data-1_<volume>_<slice>.jpg``;
  Radiopaedia publishes two series of some cases (``…pneumonia-10_85902_1-dcm`` and
  ``…_3-dcm``), which stay one patient so that a patient-disjoint split never puts one
  person's two series on both sides.
* GT PNGs have soft edges (0–255); lesion = value > 127, binarized to 0 / 255 here.

The slices have no official split (split ""): a source is split by patient at run time.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from fewshot_transfer.data.dataset_format import DatasetSpec, ManifestRow
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers.common import ImportOptions, Plan, list_files, slice_group
from fewshot_transfer.data.importers.semiseg import binarize
from fewshot_transfer.data.readers import RASTER_SUFFIXES

PSEUDO = "TrainingSet/LungInfection-Train/Pseudo-label"
#: The import kind (``ftbench data import semiseg-pseudo``) and its line in ``--help``.
KIND = "semiseg-pseudo"
HELP = "COVID-SemiSeg's 1600 pseudo-labeled slices as a machine-labeled source (sites coronacases, radiopaedia)"
LAYOUT = f"{PSEUDO}/{{Imgs/*.jpg, GT/*.png}} (the Inf-Net Dataset/ folder; GT = the published pseudo-labels)"
#: Sub-site -> what identifies it in a volume name.
SITES = {"coronacases": "coronacases", "radiopaedia": "radiopaedia"}
_RADIOPAEDIA_CASE = re.compile(r"^(.*radiopaedia_org_covid-19-pneumonia-\d+)_\d+_\d+-dcm$")


def plan(src: Path, options: ImportOptions) -> Plan:
    if not (src / "TrainingSet").is_dir() and (src / "Dataset" / "TrainingSet").is_dir():
        src = src / "Dataset"
    images = list_files(src / PSEUDO / "Imgs", RASTER_SUFFIXES)
    if not images:
        raise DatasetError(f"{src}: no pseudo-labeled COVID-SemiSeg slices found; expected {LAYOUT}")
    gts = {p.stem: p for p in list_files(src / PSEUDO / "GT", RASTER_SUFFIXES)}
    files: dict = {}
    rows: list[ManifestRow] = []
    skipped: list[str] = []
    for img in images:
        gt = gts.get(img.stem)
        if gt is None:
            skipped.append(img.name)
            continue
        volume = slice_group(img.stem)
        number = img.stem[len(volume) + 1 :]
        image, mask = f"images/{img.name}", f"masks/{img.stem}.png"
        files[image] = img
        files[mask] = partial(binarize, gt)
        rows.append(
            ManifestRow(
                image=image,
                mask=mask,
                patient=patient_of(volume),
                slice=int(number) if number.isdigit() else None,
                site=site_of(volume, img),
            )
        )
    if not rows:
        raise DatasetError(f"{src / PSEUDO / 'GT'}: no pseudo-label PNG matches an image of Imgs/; expected {LAYOUT}")
    notes = []
    if skipped:
        notes.append(f"{len(skipped)} image(s) without a GT/*.png skipped (e.g. {skipped[0]})")
    if options.lesion_labels and options.lesion_labels != (255,):
        notes.append("--lesion-labels ignored: the pseudo-labels are binarized (value > 127 -> lesion 255)")
    by_site = {s: sum(1 for r in rows if r.site == s) for s in SITES}
    notes.append(
        f"found {len(rows)} machine-labeled slices: "
        + ", ".join(f"{n} {s} ({len({r.patient for r in rows if r.site == s})} patients)" for s, n in by_site.items())
    )
    spec = DatasetSpec(
        name=options.name or "covid-semiseg-pseudo",
        intensity="windowed-uint8",
        lesion_labels=(255,),
        labels={255: "infection"},
        label_origin="model",
        description=(
            "COVID-SemiSeg pseudo-labeled slices of the 20 COVID-19-CT-Seg volumes (coronacases.org, Radiopaedia): "
            "labels made by a model (Semi-Inf-Net) trained on the 50 doctor-labeled development slices"
        ),
    )
    return Plan(spec=spec, rows=rows, files=files, notes=notes)


def site_of(volume: str, path: Path) -> str:
    """``coronacases`` or ``radiopaedia`` from the volume name (an unknown one is an error)."""
    for site, marker in SITES.items():
        if marker in volume:
            return site
    raise DatasetError(f"{path}: volume {volume!r} is from neither coronacases.org nor Radiopaedia; expected {LAYOUT}")


def patient_of(volume: str) -> str:
    """The case a volume belongs to: Radiopaedia's ``…pneumonia-10_85902_3-dcm`` -> ``…pneumonia-10``."""
    match = _RADIOPAEDIA_CASE.match(volume)
    return match.group(1) if match else volume
