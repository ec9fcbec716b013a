"""``ftbench data``: inspect, import, preview and generate datasets."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from fewshot_transfer.data.registry import DatasetEntry

_FORMAT = (
    "A dataset is a folder with dataset.json (intensity convention, lesion labels, spacing) and "
    "manifest.csv (image,mask,patient,split,slice; one row per image or volume)."
)
_CACHE_HELP = "decoded-dataset cache (default $FTBENCH_CACHE/datasets or ~/.cache/ftbench/datasets)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect, import, preview and generate datasets",
        description=f"Work with datasets. {_FORMAT}",
    )
    parser.set_defaults(func=_usage(parser))
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _register_info(sub)
    _register_import(sub)
    _register_download(sub)
    _register_preview(sub)
    _register_phantom(sub)


def _register_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="summarize a dataset: patients, slices, splits, lesion burden, warnings",
        description=(
            "Load a dataset folder (or phantom:cap / phantom:covid) through the cache and print patients, "
            "slices, labeled/unlabeled counts, official splits, lesion-fraction statistics (measured at --size), "
            "intensity convention, spacing and warnings that affect benchmark validity."
        ),
    )
    p.add_argument("dataset", metavar="DIR", help="dataset folder, or phantom:cap / phantom:covid")
    _add_load_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    p.set_defaults(func=_cmd_info)


def _register_import(sub: argparse._SubParsersAction) -> None:
    from fewshot_transfer.data.importers import kind_help

    helps = kind_help()  # each importer module declares its own line
    kinds = "\n".join(f"  {k:15s} {v}" for k, v in helps.items())
    p = sub.add_parser(
        "import",
        help="convert a public COVID-19 CT layout into a dataset folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            f"Convert a public dataset, read in place from SRC (never downloaded), into a dataset folder.\n"
            f"{_FORMAT}\n\nKinds:\n{kinds}\n\n"
            "Files are hard-linked into DIR (no extra disk space) or copied when DIR is on another filesystem "
            "(or with --copy); converted files (binarized SemiSeg masks) are written. The dataset's own "
            "train/test split goes into the manifest's split column. DIR appears only when the import succeeded."
        ),
    )
    p.add_argument("kind", choices=list(helps), metavar="KIND", help=f"layout: {', '.join(helps)}")
    p.add_argument("src", type=Path, metavar="SRC", help="folder (or, for 'folder', the CSV) holding the unpacked data")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="new dataset folder to create")
    p.add_argument(
        "--lesion-labels",
        type=_label_list,
        metavar="1,2",
        help="mask values that count as lesion (default per kind: medseg 1,2; msd/folder all non-zero)",
    )
    p.add_argument("--name", help="dataset name (default per kind)")
    p.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")
    p.add_argument(
        "--labeled-only", action="store_true", help="skip unlabeled images (e.g. MosMed's ~1,060 unlabeled studies)"
    )
    p.add_argument(
        "--site",
        type=lambda t: tuple(s for s in t.replace(" ", "").split(",") if s),
        metavar="A[,B]",
        help="keep only these sites, for layouts that record one (semiseg-pseudo: coronacases, radiopaedia)",
    )
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.add_argument("--check", action="store_true", help="load the result once (fills the cache) and print its summary")
    p.add_argument("--size", type=int, default=64, help="slice size for --check (default 64)")
    p.add_argument("--cache-dir", type=Path, help=_CACHE_HELP)
    p.set_defaults(func=_cmd_import)


def _register_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download a public dataset (checksums, license, resume) and import it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Download NAME into DIR (default datasets/NAME): DIR/downloads/ holds the published files "
            "(resumed after an interruption), DIR/raw/ the unpacked files, DIR/dataset/ the imported dataset "
            "folder to give to ftbench run --target / --source. The license and citation are shown first. "
            "Every file is checked against its published checksum; a file without one gets its sha256 pinned "
            "in DIR/checksums.lock.json on the first download. Where a file needs a login or a form, the "
            "command says what to do and where to save the file; run it again afterwards.\n\n"
            "ftbench data download --list shows every dataset with size, checksum and license."
        ),
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="dataset name (see --list)")
    p.add_argument("--list", action="store_true", help="print the table of downloadable datasets and exit")
    p.add_argument("--to", type=Path, metavar="DIR", help="download folder (default datasets/NAME)")
    p.add_argument("--no-import", action="store_true", help="download, verify and unpack only")
    p.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="BASE_URL",
        help="try BASE_URL/<file name> before the published addresses (repeatable); checksums still apply",
    )
    p.add_argument("--force", action="store_true", help="unpack and import again even if DIR/dataset exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_download)


def _register_preview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preview",
        help="write a PNG grid of slices with lesion outlines",
        description=(
            "Draw a grid of slices (mostly lesion-positive) with their lesion masks, one block per dataset. "
            "Each SRC is a dataset folder or a phantom domain (cap, covid, phantom:cap, phantom:covid)."
        ),
    )
    p.add_argument("sources", nargs="+", metavar="SRC", help="dataset folder(s) and/or cap / covid")
    p.add_argument("--out", type=Path, required=True, metavar="PNG", help="output image")
    p.add_argument("--n", type=int, default=8, help="slices per dataset (default 8)")
    p.add_argument("--seed", type=int, default=0, help="which slices are picked (default 0)")
    p.add_argument("--patients", type=int, default=10, help="phantom patients to generate (default 10)")
    _add_load_options(p)
    p.set_defaults(func=_cmd_preview)


def _register_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="generate a synthetic CT phantom domain and export it as a NIfTI dataset folder",
        description=(
            "Generate phantom patients (CAP: lobar consolidation; COVID-19: peripheral ground glass) and write "
            "them as a dataset folder: images/, masks/, lungs/ NIfTI per patient plus dataset.json and manifest.csv."
        ),
    )
    p.add_argument("--domain", choices=("cap", "covid"), required=True, help="disease / scanner domain")
    p.add_argument("--patients", type=int, default=20, help="number of patients (default 20)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="new dataset folder to create")
    p.add_argument("--size", type=int, default=64, help="slice size in pixels, >= 32 (default 64)")
    p.add_argument("--slices", type=int, default=12, help="axial slices per patient (default 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--intensity",
        choices=("hu", "windowed-uint8"),
        help="storage convention (default: the domain's scanner profile)",
    )
    p.add_argument(
        "--effusion-as-lesion", action="store_true", help="label pleural effusion as lesion (MedSeg does not)"
    )
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")
    p.set_defaults(func=_cmd_phantom)


def _add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=64, help="slice size the data is loaded at (default 64)")
    p.add_argument("--cache-dir", type=Path, help=_CACHE_HELP)


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show


def _label_list(text: str) -> tuple[int, ...]:
    from fewshot_transfer.data.importers.common import parse_label_list

    try:
        return parse_label_list(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _domain_spec(text: str) -> str:
    return f"phantom:{text}" if text in ("cap", "covid") else text


def _cmd_info(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fewshot_transfer.data.info import describe, render

    info = describe(_domain_spec(args.dataset), size=args.size, cache_dir=args.cache_dir)
    if args.json:
        Console().print_json(json.dumps(info.to_json(), default=str))
    else:
        render(info)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fewshot_transfer.data.importers import import_dataset

    report = import_dataset(
        args.kind,
        args.src,
        args.out,
        lesion_labels=args.lesion_labels,
        name=args.name,
        copy=args.copy,
        labeled_only=args.labeled_only,
        overwrite=args.force,
        sites=args.site,
    )
    console = Console()
    placed = ", ".join(f"{n} {how}" for how, n in sorted(report.placed.items()))
    console.print(
        f"imported {report.kind}: {report.rows} manifest rows ({report.labeled_rows} labeled) from "
        f"{report.patients} patient groups into {report.out_dir} (files: {placed})"
    )
    for note in report.notes:
        console.print(f"  note: {note}")
    if args.check:
        from fewshot_transfer.data.info import describe, render

        render(describe(report.out_dir, size=args.size, cache_dir=args.cache_dir), console)
    else:
        console.print(f"next: ftbench data info {report.out_dir}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fewshot_transfer.data.download import ManualStepRequired, download_dataset, progress_bar
    from fewshot_transfer.data.registry import ENTRIES, get_entry

    console = Console()
    if args.list:
        console.print(download_table(ENTRIES.values()))
        return 0
    if not args.name:
        raise ValueError("give a dataset NAME (ftbench data download --list shows them)")
    entry = get_entry(args.name)
    root = args.to or Path("datasets") / entry.name
    _print_terms(console, entry)
    try:
        with progress_bar(not args.no_progress) as bar:
            report = download_dataset(
                entry, root, do_import=not args.no_import, mirrors=tuple(args.mirror), force=args.force, progress=bar
            )
    except ManualStepRequired as step:
        console.print(f"[bold yellow]manual step needed[/bold yellow]\n{step}", highlight=False)
        return 3
    for name, status in report.files.items():
        console.print(f"  {name}: {status}")
    for name, digest in report.pinned.items():
        console.print(
            f"[yellow]{name} has no published checksum:[/yellow] pinned sha256 {digest} in "
            f"{root / 'checksums.lock.json'}; later downloads into this folder must match it"
        )
    if report.imported is not None:
        imp = report.imported
        console.print(
            f"imported {imp.kind}: {imp.rows} manifest rows ({imp.labeled_rows} labeled), {imp.patients} patient "
            f"groups -> {imp.out_dir}"
        )
    if report.dataset_dir is not None:
        console.print(f"ready: ftbench data info {report.dataset_dir}   |   ftbench run --target {report.dataset_dir}")
    else:
        console.print(f"unpacked into {root / 'raw'} (not imported: --no-import)")
    return 0


def download_table(entries: Iterable[DatasetEntry]) -> Table:
    """The ``--list`` table: name, size, checksum (or that none is published), license, access."""
    from rich.table import Table

    from fewshot_transfer.data.registry import format_size

    table = Table(
        title="ftbench data download --list",
        title_justify="left",
        show_lines=True,
        caption="checksums abbreviated; the full values are in fewshot_transfer/data/registry.py and are "
        "verified on every download",
    )
    for col in ("name", "dataset", "size", "checksum", "license", "access"):
        table.add_column(col, overflow="fold")
    for e in entries:
        sums = []
        for f in e.files:
            if f.checksum:
                algo, _, digest = f.checksum.partition(":")
                sums.append(f"{f.name}: {algo}:{digest[:12]}… (from {f.checksum_source.split(' (')[0]})")
            else:
                sums.append(f"{f.name}: none published (sha256 pinned on first download)")
        license_text = e.license + (f"\n[bold red]{'; '.join(e.restrictions)}[/bold red]" if e.restrictions else "")
        drive = any("drive.google" in u for f in e.files for u in f.urls)
        access = (
            "manual step" if e.manual else "direct" + (" (Google Drive may ask for a manual step)" if drive else "")
        )
        table.add_row(e.name, e.title, format_size(e.size), "\n".join(sums), license_text, access)
    return table


def _print_terms(console: Console, entry: DatasetEntry) -> None:
    """License, restrictions and citation, shown before any byte is fetched."""
    console.print(f"[bold]{entry.title}[/bold]  ({entry.homepage})")
    console.print(f"license: {entry.license}", highlight=False)
    for item in entry.restrictions:
        console.print(f"[bold red]license restriction: {item}[/bold red]")
    console.print(f"cite: {entry.citation}", highlight=False)
    if entry.notes:
        console.print(f"note: {entry.notes}", highlight=False)


def _cmd_preview(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fewshot_transfer.data.loader import load_domain
    from fewshot_transfer.data.preview import preview_grid

    sets = []
    for src in map(_domain_spec, args.sources):
        phantom = {"n_patients": args.patients} if src.startswith("phantom:") else None
        sets.append(load_domain(src, size=args.size, cache_dir=args.cache_dir, phantom=phantom))
    out = preview_grid(sets, args.out, n_per_domain=args.n, seed=args.seed)
    Console().print(f"wrote {out}")
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console

    from fewshot_transfer.data.export import write_phantom_dataset
    from fewshot_transfer.data.phantom import DEFAULT_PROFILES, generate_volumes

    profile = DEFAULT_PROFILES[args.domain]
    if args.intensity:
        profile = replace(profile, intensity=args.intensity)
    volumes = generate_volumes(
        args.domain,
        args.patients,
        size=args.size,
        n_slices=args.slices,
        seed=args.seed,
        profile=profile,
        effusion_as_lesion=args.effusion_as_lesion,
    )
    out = write_phantom_dataset(volumes, args.out, name=f"phantom-{args.domain}", profile=profile, overwrite=args.force)
    Console().print(
        f"wrote phantom {args.domain}: {len(volumes)} patients x {args.slices} slices of {args.size}x{args.size} "
        f"({profile.intensity}) to {out}"
    )
    return 0
