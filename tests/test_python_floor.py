"""The package keeps working on the oldest Python that pyproject.toml claims (3.10).

A full import under 3.10 would need torch & co. installed for it; what breaks on an older
interpreter in practice is syntax and the standard library (``import tomllib`` is 3.11+).
So a 3.10 interpreter, when one is on this machine, compiles every module and resolves
every standard-library import outside a ``try: ... except ImportError`` fallback.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fewshot_transfer"
FLOOR = (3, 10)

CHECK = r"""
import importlib, json, sys
files, imports = json.loads(sys.stdin.read())
problems = []
for path in files:
    try:
        compile(open(path, encoding="utf-8").read(), path, "exec")
    except SyntaxError as exc:
        problems.append(f"{path}:{exc.lineno}: syntax error on {sys.version.split()[0]}: {exc.msg}")
for path, line, module, name in imports:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        problems.append(f"{path}:{line}: no module {module} on {sys.version.split()[0]}")
        continue
    if name and not hasattr(mod, name) and importlib.util.find_spec(f"{module}.{name}") is None:
        problems.append(f"{path}:{line}: {module} has no {name} on {sys.version.split()[0]}")
print(json.dumps(problems))
"""


def floor_python() -> str | None:
    """A working python3.10: $FTBENCH_PY310, then PATH, then pyenv's install folder."""
    candidates = [os.environ.get("FTBENCH_PY310"), shutil.which("python3.10")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    for exe in filter(None, candidates):
        probe = subprocess.run(
            [exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(FLOOR):
            return exe
    return None


def _guarded(tree: ast.AST) -> set[int]:
    """ids of nodes the floor Python never runs or whose ImportError is handled.

    That is the branch of an ``if sys.version_info ...`` the floor does not take, and the
    body of a ``try`` that catches ImportError (version fallbacks).
    """
    ids: set[int] = set()
    floor = SimpleNamespace(version_info=(*FLOOR, 0, "final", 0))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "sys.version_info" in ast.unparse(node.test):
            taken = eval(compile(ast.Expression(node.test), "<test>", "eval"), {"sys": floor})
            ids |= {id(n) for stmt in (node.orelse if taken else node.body) for n in ast.walk(stmt)}
        if isinstance(node, ast.Try):
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if caught & {"ImportError", "ModuleNotFoundError"}:
                ids |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return ids


def stdlib_imports(path: Path) -> list[tuple[str, int, str, str | None]]:
    """(file, line, module, name) for each unguarded standard-library import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = _guarded(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found += [(str(path), node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module != "__future__":
            found += [(str(path), node.lineno, node.module, a.name) for a in node.names]
    return [f for f in found if f[2].split(".")[0] in sys.stdlib_module_names]


def test_pyproject_states_the_floor():
    text = (ROOT / "pyproject.toml").read_text()
    assert f'requires-python = ">={FLOOR[0]}.{FLOOR[1]}"' in text


def test_stdlib_scan_skips_version_fallbacks(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli\n"
        "if sys.version_info >= (3, 11):\n    import tomllib\nelse:\n    import csv\n"
        "import json\nfrom typing import Self\n"
    )
    assert sorted((m, n or "") for _, _, m, n in stdlib_imports(src)) == [("csv", ""), ("json", ""), ("typing", "Self")]


def test_package_compiles_and_imports_stdlib_on_the_floor_python():
    exe = floor_python()
    if exe is None:
        pytest.skip("no Python 3.10 interpreter here (set FTBENCH_PY310 to one)")
    files = sorted(PACKAGE.rglob("*.py"))
    imports = [i for f in files for i in stdlib_imports(f)]
    run = subprocess.run(
        [exe, "-I", "-c", CHECK],
        input=json.dumps([[str(f) for f in files], imports]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    problems = json.loads(run.stdout)
    assert not problems, "\n".join(problems)
