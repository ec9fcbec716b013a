"""scripts/adversarial_readings.py and scripts/diagnose_finetune.py: the readings behind the real-CT verdicts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fewshot_transfer.cli import main

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(learner: str, seed: int, dice: float, d_last: dict | None = None, probe: tuple | None = None) -> dict:
    rec = {
        "learner": learner,
        "k_label": "0",
        "seed": seed,
        "status": "ok",
        "metrics": {"dice": dice, "pred_fraction": 0.02, "true_fraction": 0.04},
    }
    if d_last is not None:
        rec["summary"] = {"adversarial": {"d_last": d_last}}
    if probe is not None:
        rec["probe"] = {"layer": "dec1", "before": {"balanced": probe[0]}, "after": {"balanced": probe[1]}}
    return rec


def test_adversarial_readings_average_every_discriminator_and_the_probe():
    ar = _script("adversarial_readings")
    records = [
        _cell("dual-adv", 0, 0.4, {"dacc_pos_src": 0.8, "dacc_pos_tgt": 0.6, "dacc_neg_src": 0.5}, (0.7, 0.6)),
        _cell("dual-adv", 1, 0.6, {"dacc_pos_src": 0.6, "dacc_pos_tgt": 0.4, "dacc_neg_src": 0.7}, (0.9, 0.6)),
        _cell("source-only", 0, 0.3),
        {**_cell("source-only", 1, 0.0), "status": "failed"},
    ]
    rows = {r["learner"]: r for r in ar.readings(records)}
    dual = rows["dual-adv"]
    assert dual["n"] == 2 and dual["dice"] == pytest.approx(0.5)
    assert dual["dacc"]["pos"] == pytest.approx((0.7, 0.5)) and dual["dacc"]["neg"][0] == pytest.approx(0.6)
    assert (dual["probe_before"], dual["probe_after"]) == pytest.approx((0.8, 0.6))
    assert rows["source-only"]["n"] == 1 and rows["source-only"]["dacc"] == {}
    text = ar.markdown(list(rows.values()), "cmd")
    assert "| dual-adv | 0 | 2 | 0.500 | 0.020 / 0.040 (×0.50) | 0.800 → 0.600 (dec1) | neg 0.600 / " in text
    with pytest.raises(SystemExit, match="neither a run directory"):
        ar.run_dirs(ROOT / "docs")


@pytest.mark.integration
def test_finetune_diagnosis_reproduces_the_cell_and_freezes_the_encoder(tmp_path):
    """The diagnosis at finetune's own lr is the cell itself (same Dice to the last bit); the
    frozen-encoder run moves no encoder weight."""
    run = tmp_path / "run"
    args = ["run", *TINY, "--shots", "2", "--learners", "finetune", "--seeds", "1", "--no-progress"]
    assert main([*args, "--controls", "none", "--out", str(run)]) == 0
    df = _script("diagnose_finetune")
    lr = json.loads(next((run / "cells").glob("finetune*.json")).read_text())["params"]["lr"]
    out = tmp_path / "diag"
    df.main([str(run), "--k", "2", "--seeds", "0", "--lrs", f"{lr},{lr / 10}", "--every", "2", "--out", str(out)])
    result = json.loads((out / "diagnosis.json").read_text())["seeds"]["0"]
    assert result["reproduces_cell"] is True
    frozen = next(r for r in result["runs"].values() if r["frozen_encoder"])
    assert frozen["moved"]["encoder"] == 0.0 and frozen["moved"]["decoder"] > 0
    slow = result["runs"][f"lr {lr / 10:g}"]
    assert slow["moved"]["decoder"] < result["runs"][f"lr {lr:g}"]["moved"]["decoder"]
    assert (out / "curves.png").stat().st_size > 0 and "| 0 | lr " in (out / "diagnosis.md").read_text()
