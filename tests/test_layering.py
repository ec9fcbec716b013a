"""Dependencies point one way: no module imports from a layer above its own.

Every module of the package is parsed with ``ast``; module-level and function-level imports
(including ``TYPE_CHECKING`` blocks) are checked. The layer order is written here once and
mirrored in docs/architecture.md.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = "fewshot_transfer"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Highest first. A unit may import from its own unit and from lower layers only; the units
#: of one layer are independent of each other (adaptation and meta do not import each other,
#: nor do data and models). The core modules form one unit.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("commands / experiments / testing", ("commands", "cli", "experiments", "testing")),
    ("tuning", ("tuning",)),
    ("harness", ("harness",)),
    ("learners", ("learners",)),
    ("adaptation / meta", ("adaptation", "meta")),
    ("training", ("training",)),
    ("data / models", ("data", "models")),
    ("core", ("config", "atomic", "augment", "families", "losses", "metrics", "plan", "portable", "provenance")),
)
CORE = "core"
#: ``fewshot_transfer/__init__.py`` is the public-API facade: it re-exports names from every
#: layer through a lazy ``__getattr__``, so it is exempt as an importer. Inside the package
#: only ``__version__`` may be taken from it (anything else would be an upward import).
FACADE_NAMES = {"__version__"}

RANK: dict[str, int] = {}
LAYER_OF: dict[str, str] = {}
for _rank, (_layer, _units) in enumerate(reversed(LAYERS)):
    for _unit in (CORE,) if _layer == CORE else _units:
        RANK[_unit] = _rank
        LAYER_OF[_unit] = _layer
CORE_MODULES = dict(LAYERS)[CORE]


def unit_of(module: str) -> str:
    """``fewshot_transfer.harness.runner`` -> ``harness``; core modules -> ``core``."""
    first = module.split(".")[1]
    if first in CORE_MODULES:
        return CORE
    if first not in RANK:
        raise KeyError(f"{module}: {first!r} has no layer; add it to LAYERS here and in docs/architecture.md")
    return first


def is_module(name: str, root: Path = ROOT) -> bool:
    """Whether ``fewshot_transfer.a.b`` names a module or package of the source tree."""
    path = root.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(tree: ast.AST, module: str, is_package: bool, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every package-internal import anywhere in ``tree``.

    ``from X import name`` counts as importing ``X.name`` when that is a submodule; the
    facade's metadata names map to no module and are skipped.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if is_module(sub, root):
                    found.append((node.lineno, sub))
                elif target != PACKAGE or alias.name not in FACADE_NAMES:
                    found.append((node.lineno, target))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """Every upward or sideways import in the package under ``root``, as readable lines."""
    problems: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if rel == Path(PACKAGE, "__init__.py"):
            continue  # the facade
        is_package = path.name == "__init__.py"
        parts = rel.with_suffix("").parts
        module = ".".join(parts[:-1] if is_package else parts)
        src = unit_of(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imported_modules(tree, module, is_package, root):
            if target == PACKAGE:
                problems.append(f"{rel}:{line}: imports from the {PACKAGE} facade (only __version__ is allowed inside)")
                continue
            dst = unit_of(target)
            if dst == src or RANK[dst] < RANK[src]:
                continue
            how = "a higher layer" if RANK[dst] > RANK[src] else "a sibling in the same layer"
            problems.append(
                f"{rel}:{line}: {LAYER_OF[src]} ({src}) imports {target} from {how}: {LAYER_OF[dst]} ({dst})"
            )
    return problems


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its body), the facade excluded."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if rel == Path(PACKAGE, "__init__.py"):
            continue
        is_package = path.name == "__init__.py"
        parts = rel.with_suffix("").parts
        module = ".".join(parts[:-1] if is_package else parts)
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {t for _, t in imported_modules(tree, module, is_package, root) if t not in (PACKAGE, module)}
    return graph


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    """Every circle of imports between modules of the package (strongly connected components
    of more than one module, Tarjan's algorithm), each sorted; a lazy import counts too."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v] & graph.keys()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_no_import_cycles_between_modules():
    """The layer rule orders folders; inside a folder, modules must not import each other in a circle."""
    cycles = import_cycles()
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_checker_finds_a_lazy_circle(tmp_path):
    _write(tmp_path, "__init__.py", "")
    _write(tmp_path, "harness/__init__.py", "")
    _write(tmp_path, "harness/a.py", "from fewshot_transfer.harness.b import f\n")
    _write(tmp_path, "harness/b.py", "def f():\n    from fewshot_transfer.harness import a\n")
    _write(tmp_path, "harness/c.py", "from fewshot_transfer.harness import a\n")
    assert import_cycles(tmp_path / PACKAGE) == [["fewshot_transfer.harness.a", "fewshot_transfer.harness.b"]]


def test_imports_point_down_the_layers():
    problems = violations()
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        if path.parent == ROOT and path.name != "__init__.py":
            unit_of(f"{PACKAGE}.{path.stem}")
        elif path.parent != ROOT:
            unit_of(f"{PACKAGE}.{path.relative_to(ROOT).parts[0]}")


def _write(root: Path, rel: str, text: str) -> None:
    path = root / PACKAGE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_catches_function_level_relative_and_sibling_imports(tmp_path):
    _write(tmp_path, "__init__.py", "")
    _write(tmp_path, "config.py", "")
    for pkg in ("data", "models", "meta", "adaptation", "harness"):
        _write(tmp_path, f"{pkg}/__init__.py", "")
    _write(tmp_path, "harness/stats.py", "")
    _write(tmp_path, "data/ok.py", "from fewshot_transfer.config import x\nfrom . import other\n")
    _write(tmp_path, "data/other.py", "def f():\n    from ..harness import stats\n")
    _write(tmp_path, "meta/engine.py", "import fewshot_transfer.adaptation\n")
    _write(tmp_path, "models/unet.py", "from fewshot_transfer import __version__, Learner\n")
    problems = violations(tmp_path / PACKAGE)
    assert len(problems) == 3, problems
    assert (
        "fewshot_transfer/data/other.py:2: data / models (data) imports fewshot_transfer.harness.stats" in problems[0]
    )
    assert "higher layer: harness (harness)" in problems[0]
    assert "fewshot_transfer/meta/engine.py:1" in problems[1] and "sibling" in problems[1]
    assert "fewshot_transfer/models/unet.py:1" in problems[2] and "facade" in problems[2]


def test_layer_order_is_the_documented_one():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    order = " → ".join(name for name, _ in LAYERS)
    assert order in doc, f"docs/architecture.md must state the layer order: {order}"


#: What reads results: leaderboard, LaTeX, plots, claims judging, the HTML report and their commands.
REPORTING = (
    "fewshot_transfer.harness.leaderboard",
    "fewshot_transfer.harness.latex",
    "fewshot_transfer.harness.plots",
    "fewshot_transfer.harness.claims",
    "fewshot_transfer.harness.outputs",
    "fewshot_transfer.harness.html_report",
    "fewshot_transfer.harness.store",
    "fewshot_transfer.harness.reproduce",
    "fewshot_transfer.commands.leaderboard",
    "fewshot_transfer.commands.claims",
    "fewshot_transfer.commands.report",
)

NO_EXECUTION = """
import importlib, json, sys
for name in sys.argv[3:]:
    importlib.import_module(name)
from fewshot_transfer.cli import main
rc = main(["leaderboard", sys.argv[1], "--out", sys.argv[2], "--latex"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith("fewshot_transfer.learners"))
rows = json.loads(open(sys.argv[2] + "/leaderboard.json").read())["rows"]
print(json.dumps({"rc": rc, "loaded": loaded, "controls": {r["learner"]: r["control"] for r in rows}}))
"""


def _old_cell(run: Path, learner: str, seed: int, dice: float, params: dict) -> None:
    """A cell as written before cells recorded their control arm (no ``control`` field)."""
    record = {
        "learner": learner,
        "k": 2,
        "k_label": "2",
        "seed": seed,
        "status": "ok",
        "family": "meta" if learner == "maml" else "baseline",
        "supports_k0": False,
        "params": params,
        "metrics": {"dice": dice, "dice_global": dice, "pred_fraction": 0.01, "true_fraction": 0.01, "hd95": 1.0},
    }
    (run / "cells").mkdir(parents=True, exist_ok=True)
    (run / "cells" / f"{learner}__k-2__seed-{seed}.json").write_text(json.dumps(record))


def test_reporting_imports_neither_torch_nor_the_learners(tmp_path):
    """Rendering a leaderboard (with LaTeX and the plot) of cells from before control arms:
    their controls come from what the cells record (``store.upgrade_records``), and nothing on
    the way imports torch or a learner."""
    from fewshot_transfer.config import resolve_config, to_toml

    run = tmp_path / "run"
    schedule = {"steps": 200, "lr": 0.006, "batch_size": 8}
    for seed in range(3):
        _old_cell(run, "finetune", seed, 0.5 + 0.01 * seed, schedule)
        _old_cell(run, "maml", seed, 0.52 + 0.02 * seed, {**schedule, "meta_steps": 100})
        _old_cell(run, "reptile", seed, 0.51 + 0.02 * seed, {**schedule, "lr": 0.003, "meta_steps": 100})
    (run / "config.toml").write_text(to_toml(resolve_config(None, [])))  # the old upgrade read it, and the registry
    proc = subprocess.run(
        [sys.executable, "-c", NO_EXECUTION, str(run), str(tmp_path / "out"), *REPORTING],
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and result["loaded"] == []
    # maml at finetune's parameters is served by finetune's row; reptile at another lr by its own
    assert result["controls"] == {"finetune": "scratch", "maml": "finetune", "reptile": "reptile-control"}
