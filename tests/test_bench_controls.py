"""benchmarks/bench_controls.py: the verdict each positive control prints, and its presets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fewshot_transfer import learners
from fewshot_transfer.config import resolve_config

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_controls", ROOT / "benchmarks" / "bench_controls.py")
bench_controls = importlib.util.module_from_spec(spec)
sys.modules["bench_controls"] = bench_controls  # dataclasses resolve annotations through it
spec.loader.exec_module(bench_controls)


def _rows(name: str, dice: list[float], pred: float, true: float = 0.01) -> list[dict]:
    return [
        {"seed": s, "learner": name, "dice": d, "pred_fraction": pred, "true_fraction": true}
        for s, d in enumerate(dice)
    ]


def test_gain_control_needs_the_paired_ci_above_zero():
    control = bench_controls.CONTROLS["scanner-shift"]
    ref = [0.50, 0.55, 0.60, 0.52, 0.58]
    clear = _rows("source-only", ref, 0.01) + _rows("adaptseg", [d + 0.05 + 0.001 * i for i, d in enumerate(ref)], 0.01)
    assert bench_controls.judge(control, clear)["holds"]
    noisy = _rows("source-only", ref, 0.01) + _rows(
        "adaptseg", [d + s for d, s in zip(ref, (0.1, -0.08, 0.09, -0.07, 0.0))], 0.01
    )
    verdict = bench_controls.judge(control, noisy)
    assert not verdict["holds"] and verdict["paired_diff"]["lo"] < 0


def test_collapse_control_needs_the_reference_collapsed_and_the_learner_not():
    control = bench_controls.CONTROLS["imbalance"]
    dice = [0.3, 0.4, 0.35]
    holds = _rows("adaptseg", dice, pred=0.001) + _rows("adaptseg-balanced", dice, pred=0.008)
    assert bench_controls.judge(control, holds)["holds"]
    both_fine = _rows("adaptseg", dice, pred=0.009) + _rows("adaptseg-balanced", dice, pred=0.008)
    verdict = bench_controls.judge(control, both_fine)
    assert not verdict["holds"] and not verdict["fractions"]["adaptseg"]["collapsed"]
    both_collapsed = _rows("adaptseg", dice, pred=0.001) + _rows("adaptseg-balanced", dice, pred=0.001)
    assert not bench_controls.judge(control, both_collapsed)["holds"]


@pytest.mark.parametrize("name", sorted(bench_controls.CONTROLS))
def test_every_control_has_a_preset_naming_registered_learners(name):
    cfg = resolve_config(ROOT / "configs" / "scenarios" / f"{name}.toml", [])
    control = bench_controls.CONTROLS[name]
    assert learners.get(control.learner) and learners.get(control.reference)
    assert int(cfg["run"]["seeds"]) >= 3
    assert cfg["data"]["source"] != cfg["data"]["target"]
