"""Learners: every module in this package registers one or more learners on import.

``available()`` lists them in a stable order (baselines first, then the families); a new
learner is one new module here, nothing else to edit. Learners outside the package come in
as plugins: a file or module named with ``--plugin`` (:func:`load_plugins`), or an
installed distribution's ``ftbench.learners`` entry point (loaded with the built-ins).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import traceback
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from fewshot_transfer.families import FAMILIES
from fewshot_transfer.learners.base import REGISTRY, Control, Learner, register
from fewshot_transfer.learners.controls import register_controls
from fewshot_transfer.training import LearnerContext, Segmenter

__all__ = [
    "ENTRY_POINT_GROUP",
    "Control",
    "REGISTRY",
    "Learner",
    "LearnerContext",
    "PluginError",
    "Segmenter",
    "available",
    "get",
    "load_plugins",
    "register",
]

#: Entry-point group through which installed distributions contribute learners.
ENTRY_POINT_GROUP = "ftbench.learners"

_FAMILY_ORDER = {family: i for i, family in enumerate(FAMILIES)}
_BASELINE_ORDER = ("scratch", "source-only", "finetune", "joint")
_loaded = False
#: Plugins imported so far, by resolved file path or module name (each is imported once).
_plugins: dict[str, ModuleType] = {}


class PluginError(RuntimeError):
    """A learner plugin could not be imported; the message names the plugin and the exception."""


def _failure(what: str, exc: BaseException, path: Path | None) -> PluginError:
    """The error for a plugin import, pointing at the plugin's own line when there is one."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" at {exc.filename}:{exc.lineno}"
    elif path is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
        if frames:
            where = f" at {path}:{frames[-1].lineno}"
    return PluginError(f"learner plugin {what} failed to import{where}: {type(exc).__name__}: {exc}")


def _discover() -> None:
    """Import the built-in learner modules, then the installed ``ftbench.learners`` entry points."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = f" (from {ep.dist.name})" if getattr(ep, "dist", None) else ""
        try:
            ep.load()
        except Exception as exc:
            raise _failure(f"entry point {ep.name} = {ep.value}{dist}", exc, None) from exc
    register_controls()
    _loaded = True


def _import_file(path: Path) -> ModuleType:
    """Import a ``.py`` file under a private module name derived from its absolute path."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = f"ftbench_plugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"learner plugin {path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _origin(module: str) -> Path | None:
    """The file a module name resolves to, when it can be found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def load_plugins(specs: Iterable[str]) -> list[ModuleType]:
    """Import learner plugins: paths to ``.py`` files or importable module names.

    A plugin registers its learners with :func:`register` when imported. The built-in
    learners are loaded first, so a plugin that reuses a built-in name fails here, naming
    both classes. Importing the same plugin twice is a no-op.
    """
    _discover()
    modules = []
    for spec in specs:
        path = Path(spec).expanduser()
        is_file = spec.endswith(".py") or "/" in spec or path.is_file()
        key = str(path.resolve()) if is_file else spec
        if key not in _plugins:
            if is_file and not path.is_file():
                raise PluginError(f"learner plugin {spec}: no such file")
            try:
                _plugins[key] = _import_file(path.resolve()) if is_file else importlib.import_module(spec)
            except PluginError:
                raise
            except Exception as exc:
                origin = path.resolve() if is_file else _origin(spec)
                what = str(origin) if is_file else f"module {spec!r}" + (f" ({origin})" if origin else "")
                raise _failure(what, exc, origin) from exc
        modules.append(_plugins[key])
    register_controls()
    return modules


def available(controls: bool = False) -> list[str]:
    """Registered learner names: baselines in canonical order, then others by family and name.

    The derived ``NAME-control`` rows (``learners/controls.py``) only with ``controls``:
    ``--learners all`` runs the learners, ``--controls`` adds their control arms."""
    _discover()

    def order(name: str) -> tuple:
        cls = REGISTRY[name]
        base = _BASELINE_ORDER.index(name) if name in _BASELINE_ORDER else len(_BASELINE_ORDER)
        return (_FAMILY_ORDER.get(cls.family, 9), base, name)

    return sorted((n for n in REGISTRY if controls or not REGISTRY[n].control_of), key=order)


def get(name: str) -> type[Learner]:
    """The learner class registered as ``name`` (clear error listing the valid names)."""
    _discover()
    if name not in REGISTRY:
        raise ValueError(f"unknown learner {name!r}; available: {', '.join(available(controls=True))}")
    return REGISTRY[name]
