"""Converters from public COVID-19 CT layouts (read in place, never downloaded) to the dataset format.

One module per layout, each declaring its kind once: ``KIND`` (the name ``ftbench data
import KIND`` takes), ``HELP`` (its line in ``--help``), ``LAYOUT`` (a one-line description
of what it expects) and ``plan(src, options) -> Plan``. The modules of this package are
discovered (:func:`builtin_kinds`), as learners are: a new layout is one new module, nothing
else to edit. :func:`import_dataset` builds the output folder from a plan atomically and
validates it with the same reader the loader uses. Installed distributions add kinds
through the ``ftbench.importers`` entry-point group (name = kind, value = a module with
``LAYOUT`` and ``plan``).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from fewshot_transfer.data.dataset_format import atomic_dir, read_dataset, write_manifest, write_spec
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers.common import ImportOptions, Plan, place_file

log = logging.getLogger(__name__)

#: What every importer module declares (``common`` and ``_``-prefixed modules are helpers).
DECLARES = ("KIND", "HELP", "LAYOUT", "plan")
_builtin: dict[str, ModuleType] | None = None
#: Entry-point group through which installed distributions add import kinds.
ENTRY_POINT_GROUP = "ftbench.importers"


def builtin_kinds() -> dict[str, ModuleType]:
    """The importers of this package by the ``KIND`` each declares, sorted by kind."""
    global _builtin
    if _builtin is None:
        found: dict[str, ModuleType] = {}
        for info in pkgutil.iter_modules(__path__):
            if info.name == "common" or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            missing = [n for n in DECLARES if not hasattr(module, n)]
            if missing:
                raise TypeError(f"importer module {module.__name__} lacks {', '.join(missing)}")
            if module.KIND in found:
                raise TypeError(
                    f"import kind {module.KIND!r} declared by {found[module.KIND].__name__} and {module.__name__}"
                )
            found[module.KIND] = module
        _builtin = dict(sorted(found.items()))
    return _builtin


def plugin_kinds() -> dict[str, str]:
    """Kinds contributed by installed distributions: kind -> module name (not imported yet)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in builtin_kinds()}


def kind_help() -> dict[str, str]:
    """Every import kind with its ``--help`` line: the built-ins' ``HELP``, a plugin's module
    name (plugins are imported only when used)."""
    return {
        **{kind: str(module.HELP) for kind, module in builtin_kinds().items()},
        **{kind: f"plugin {module}" for kind, module in plugin_kinds().items()},
    }


@dataclass
class ImportReport:
    """What an import wrote: counts for the CLI summary, and the importer's notes."""

    out_dir: Path
    kind: str
    rows: int
    labeled_rows: int
    patients: int
    placed: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def layout_help(kind: str) -> str:
    """The expected source layout of ``kind`` (for ``--help`` and error messages)."""
    return str(_module(kind).LAYOUT)


def plan_import(kind: str, src: Path | str, options: ImportOptions | None = None) -> Plan:
    """Read the source layout and return the plan, without writing anything."""
    src = Path(src).expanduser()
    if not src.exists():
        raise DatasetError(f"import source {src} does not exist; give the folder where the {kind} data was unpacked")
    return _module(kind).plan(src, options or ImportOptions())


def import_dataset(
    kind: str,
    src: Path | str,
    out: Path | str,
    *,
    lesion_labels: tuple[int, ...] | None = None,
    name: str | None = None,
    copy: bool = False,
    labeled_only: bool = False,
    overwrite: bool = False,
    sites: tuple[str, ...] | None = None,
) -> ImportReport:
    """Convert ``src`` (layout ``kind``) into a dataset folder at ``out``.

    ``labeled_only`` drops unlabeled rows (e.g. MosMed's ~1,060 unlabeled studies);
    ``sites`` keeps the rows of those sites only (layouts that record one, e.g.
    ``semiseg-pseudo``: one collection as one source); ``copy`` copies files instead of
    hard-linking them. Nothing is left at ``out`` if
    anything fails.
    """
    plan = plan_import(kind, src, ImportOptions(lesion_labels=lesion_labels, name=name))
    rows = [r for r in plan.rows if r.mask] if labeled_only else plan.rows
    if sites:
        rows = keep_sites(rows, sites, kind)
    if not rows:
        what = "labeled images" if labeled_only else "images"
        raise DatasetError(f"{src}: the {kind} importer found no {what}; expected {layout_help(kind)}")
    needed = sorted({rel for r in rows for rel in (r.image, r.mask, r.lung) if rel})
    placed: Counter = Counter()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for rel in needed:
            source = plan.files[rel]
            dest = tmp / rel
            if isinstance(source, Path):
                placed[place_file(source, dest, copy=copy)] += 1
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                source(dest)
                placed["converted"] += 1
        write_spec(tmp, plan.spec)
        write_manifest(tmp, rows)
        read_dataset(tmp)
    for note in plan.notes:
        log.info("%s: %s", kind, note)
    return ImportReport(
        out_dir=Path(out),
        kind=kind,
        rows=len(rows),
        labeled_rows=sum(1 for r in rows if r.mask),
        patients=len({r.patient for r in rows}),
        placed=placed,
        notes=list(plan.notes),
    )


def keep_sites(rows: list, sites: tuple[str, ...], kind: str) -> list:
    """The rows of ``sites``; a site the layout does not have is an error naming the ones it has."""
    found = sorted({r.site for r in rows if r.site})
    if not found:
        raise DatasetError(f"--site: the {kind} importer records no sites; import without --site")
    unknown = [s for s in sites if s not in found]
    if unknown:
        raise DatasetError(
            f"--site {','.join(unknown)}: not a site of this {kind} data; its sites are {', '.join(found)}"
        )
    return [r for r in rows if r.site in sites]


def _module(kind: str) -> ModuleType:
    builtin = builtin_kinds()
    if kind in builtin:
        return builtin[kind]
    extra = plugin_kinds()
    if kind not in extra:
        raise DatasetError(f"unknown import kind {kind!r}; choose one of {', '.join([*builtin, *extra])}")
    try:
        module = importlib.import_module(extra[kind])
    except Exception as exc:
        raise DatasetError(
            f"importer plugin {kind} = {extra[kind]} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    missing = [n for n in ("LAYOUT", "plan") if not hasattr(module, n)]
    if missing:
        raise DatasetError(f"importer plugin {kind} = {extra[kind]} lacks {' and '.join(missing)}")
    return module


__all__ = [
    "ENTRY_POINT_GROUP",
    "builtin_kinds",
    "ImportOptions",
    "ImportReport",
    "import_dataset",
    "kind_help",
    "layout_help",
    "plan_import",
    "plugin_kinds",
]
