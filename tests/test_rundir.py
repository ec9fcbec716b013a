"""Opening a run: one function for every command and worker, and a clear error for an --out
that cannot be a run directory (it used to end in a FileExistsError traceback)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fewshot_transfer.cli import main
from fewshot_transfer.harness.rundir import check_out_path, check_run_dir

from conftest import TINY

PACKAGE = Path(__file__).resolve().parents[1] / "fewshot_transfer"


def _run(out: Path) -> list[str]:
    return [
        "run",
        *TINY,
        "--learners",
        "scratch",
        "--shots",
        "1",
        "--seeds",
        "1",
        "--controls",
        "none",
        "--no-progress",
        "--out",
        str(out),
    ]


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "runs.txt"
    out.write_text("notes")
    assert main(_run(out)) == 1
    err = capsys.readouterr().err
    assert f"--out {out} is a file, not a run directory" in err
    assert "Traceback" not in err
    assert out.read_text() == "notes"  # nothing written over it


def test_out_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="which is a file"):
        check_out_path(tmp_path / "f" / "run")


@pytest.mark.parametrize(("name", "make"), [("cells", "file"), ("config.toml", "dir"), ("split.json", "dir")])
def test_run_dir_whose_parts_have_the_wrong_kind_is_refused(tmp_path, name, make):
    path = tmp_path / name
    path.write_text("") if make == "file" else path.mkdir()
    with pytest.raises(ValueError, match=f"{name} is not a (folder|file).*use another --out"):
        check_run_dir(tmp_path, {"run": {}})


def test_cells_as_a_file_fails_cleanly_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "cells").write_text("")
    assert main(_run(out)) == 1
    err = capsys.readouterr().err
    assert "cells is not a folder" in err and "Traceback" not in err
    assert not (out / "split.json").exists()  # refused before the data were prepared


def test_prepare_is_called_only_by_open_run():
    """Every command and worker opens its run through harness.rundir.open_run (threads,
    portable kernels, plugins, directory check, data, config.toml in one order)."""
    callers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "prepare":
                if not isinstance(node.func, ast.Attribute) or getattr(node.func.value, "id", "") != "self":
                    callers.append(path.relative_to(PACKAGE).as_posix())
    assert callers == ["harness/rundir.py"], callers
