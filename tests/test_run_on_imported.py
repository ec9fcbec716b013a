"""`ftbench run --target DIR` on every imported layout: import -> info -> run completes.

Fixtures are generated in each public layout (never downloaded), sized so the target's
support pool holds a few lesion-positive slices; the run uses the tiny model config.
"""

from __future__ import annotations

import json

import pytest

from fewshot_transfer.cli import main

from conftest import TINY
from fixtures_datasets import (
    build_covid19_ct_seg,
    build_medseg,
    build_mosmed,
    build_msd,
    build_semiseg,
    build_semiseg_pseudo,
)

LAYOUTS = {
    "medseg": lambda src: build_medseg(src, n_z=30, val_z=4),
    "covid19-ct-seg": lambda src: build_covid19_ct_seg(src, n_cases=8),
    "mosmed": lambda src: build_mosmed(src, labeled=tuple(f"study_{i:04d}" for i in range(255, 263))),
    "semiseg": build_semiseg,
    "msd": lambda src: build_msd(src, n_cases=8, test_cases=2),
}


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_import_info_run(tmp_path, capsys, kind):
    src, out, run = tmp_path / "src", tmp_path / "ds", tmp_path / "run"
    LAYOUTS[kind](src)
    assert main(["data", "import", kind, str(src), "--out", str(out)]) == 0
    assert main(["data", "info", str(out)]) == 0
    assert "patients" in capsys.readouterr().out
    rc = main(
        [
            "run",
            *TINY,
            "--target",
            str(out),
            "--shots",
            "1,all",
            "--learners",
            "scratch,finetune",
            "--seeds",
            "1",
            "--out",
            str(run),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((run / "leaderboard.json").read_text())["rows"]
    assert {r["learner"] for r in rows} == {"scratch", "finetune"}
    assert all(r["n_seeds"] == 1 and r["n_failed"] == 0 for r in rows)
    assert str(out) in (run / "config.toml").read_text()


def test_machine_labeled_source_is_named_by_info_cells_and_leaderboard(tmp_path, capsys):
    """`data info` names the sites and the label origin; a run on that source says, in every
    cell and in the leaderboard header, that its source is machine-labeled."""
    src, source, target, run = tmp_path / "src", tmp_path / "pseudo", tmp_path / "target", tmp_path / "run"
    build_semiseg_pseudo(src)
    assert main(["data", "import", "semiseg-pseudo", str(src), "--out", str(source)]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(source)]) == 0
    shown = capsys.readouterr().out
    assert "model (machine-made labels)" in shown and "coronacases" in shown and "radiopaedia" in shown
    build_medseg(tmp_path / "medseg", n_z=30, val_z=4)
    assert main(["data", "import", "medseg", str(tmp_path / "medseg"), "--out", str(target)]) == 0
    args = ["run", *TINY, "--source", str(source), "--target", str(target), "--shots", "1", "--seeds", "1"]
    assert main([*args, "--learners", "finetune", "--out", str(run), "--no-progress"]) == 0
    cell = json.loads(next((run / "cells").glob("finetune*.json")).read_text())
    assert cell["provenance"]["data"]["source_labels"] == "model"
    assert set(cell["provenance"]["data"]["source_sites"]) == {"coronacases", "radiopaedia"}
    board = (run / "leaderboard.md").read_text()
    assert "MACHINE-LABELED source" in board and "sites coronacases, radiopaedia" in board
