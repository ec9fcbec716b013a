"""fewshot_transfer/experiments/controls.py: verdicts against control arms, preconditions, data draws, presets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_transfer import learners
from fewshot_transfer.config import load_toml, resolve_config
from fewshot_transfer.experiments import controls as experiment

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted(p.stem for p in (ROOT / "configs" / "scenarios").glob("*.toml"))
MET = {"checks": {"x": {"met": True}}}


def _rows(name: str, dice: list[float], pred: float = 0.01, k: int = 0, true: float = 0.01) -> list[dict]:
    return [
        {"seed": s, "learner": name, "k": k, "dice": d, "pred_fraction": pred, "true_fraction": true}
        for s, d in enumerate(dice)
    ]


REF = [0.50, 0.55, 0.60, 0.52, 0.58, 0.51, 0.57, 0.54, 0.59, 0.53]
GAIN = {"comparisons": ["adaptseg - adaptseg-control @ 0"], "variants_tried": []}


def test_gain_needs_a_holm_corrected_positive_difference_against_the_control():
    clear = _rows("adaptseg-control", REF) + _rows("adaptseg", [d + 0.05 + 0.001 * i for i, d in enumerate(REF)])
    outcome = experiment.judge(GAIN, clear, MET)
    assert outcome["holds"] and outcome["comparisons"][0]["supported"]
    noisy = _rows("adaptseg-control", REF) + _rows(
        "adaptseg", [d + s for d, s in zip(REF, (0.1, -0.08, 0.09, -0.07, 0.0) * 2)]
    )
    assert experiment.judge(GAIN, noisy, MET)["holds"] is False
    worse = _rows("adaptseg-control", REF) + _rows("adaptseg", [d - 0.05 - 0.001 * i for i, d in enumerate(REF)])
    assert experiment.judge(GAIN, worse, MET)["holds"] is False  # significant, but the wrong way


def test_variants_tried_enter_the_holm_family_on_the_presets_own_draw_only():
    marginal = _rows("adaptseg-control", REF) + _rows(
        "adaptseg", [d + 0.012 + s for d, s in zip(REF, (0.03, -0.02, 0.025, -0.015, 0.01) * 2)]
    )
    alone = experiment.judge(GAIN, marginal, MET)
    p = alone["comparisons"][0]["p_value"]
    assert 0.01 < p < 0.05 and alone["holds"]
    searched = {**GAIN, "variants_tried": ["a", "b", "c", "d", "e"]}
    assert experiment.judge(searched, marginal, MET)["comparisons"][0]["p_holm"] == pytest.approx(min(1, 6 * p))
    assert experiment.judge(searched, marginal, MET)["holds"] is False
    assert experiment.judge(searched, marginal, MET, draw=1)["holds"]  # the replication tests one preset


def test_failed_preconditions_give_no_verdict():
    clear = _rows("adaptseg-control", REF) + _rows("adaptseg", [d + 0.05 + 0.001 * i for i, d in enumerate(REF)])
    pre = {"checks": {"oracle_gap": {"met": False}, "source_only_drop": {"met": True}}}
    outcome = experiment.judge(GAIN, clear, pre)
    assert outcome["holds"] is None and outcome["failed_preconditions"] == ["oracle_gap"]
    lines = experiment.report_lines({"checks": {}}, outcome)
    assert lines[-1].startswith("NO VERDICT")


def test_preconditions_of_one_k_withhold_only_that_ks_verdict():
    spec = {"comparisons": ["adaptseg - adaptseg-control @ 0", "adaptseg - adaptseg-control @ 1"], "variants_tried": []}
    up = [d + 0.05 + 0.001 * i for i, d in enumerate(REF)]
    rows = _rows("adaptseg-control", REF) + _rows("adaptseg", up)
    rows += _rows("adaptseg-control", REF, k=1) + _rows("adaptseg", up, k=1)
    pre = {"checks": {"x": {"met": True}}, "checks_at": {"0": {"routed_lesion_as_background": {"met": False}}}}
    outcome = experiment.judge(spec, rows, pre)
    assert outcome["holds"] is True and outcome["untestable"] == ["adaptseg - adaptseg-control @ 0"]
    assert outcome["comparisons"][0]["unmet_preconditions"] == ["routed_lesion_as_background"]
    assert outcome["comparisons"][1]["unmet_preconditions"] == []
    lines = experiment.report_lines({"checks": {}}, outcome)
    assert "NO VERDICT at this k" in lines[-3] and lines[-1].startswith("verdict over the testable")
    worse = _rows("adaptseg-control", REF) + _rows("adaptseg", up)
    worse += _rows("adaptseg-control", REF, k=1) + _rows("adaptseg", REF, k=1)
    assert experiment.judge(spec, worse, pre)["holds"] is False  # the testable k decides
    nothing = {**pre, "checks_at": {"0": pre["checks_at"]["0"], "1": {"y": {"met": False}}}}
    assert experiment.judge(spec, rows, nothing)["holds"] is None


def test_routing_sends_missed_lesion_pixels_to_the_background_discriminator():
    """A model that sees half a lesion confidently: that half is routed as lesion, the far
    part of the missed half as background, the band between them nowhere."""
    from fewshot_transfer.training.params import Params

    masks = np.zeros((1, 32, 32), np.uint8)
    masks[0, 8:24, 4:28] = 1
    seen = torch.full((1, 1, 32, 32), -9.0)
    seen[..., 8:24, 4:12] = 9.0

    out = experiment.routing(lambda x: seen, Params({"conf_threshold": 0.9, "ignore_radius": 2}), masks * 1.0, masks)
    assert out["routed_lesion_as_lesion"] == pytest.approx(8 / 24)
    assert out["routed_lesion_as_background"] == pytest.approx((24 - 8 - 2) / 24)


@pytest.mark.integration
def test_preconditions_other_than_the_oracle_never_read_the_test_set(tmp_path):
    """A preset's knobs are tuned until its preconditions hold, so they must not be read on
    the test set: blanking the test slices moves the oracle's score and nothing else."""
    from dataclasses import replace

    from fewshot_transfer.harness.benchmark import prepare

    from conftest import TINY

    torch.set_num_threads(1)
    cfg = resolve_config(None, [*(TINY[i + 1] for i in range(0, len(TINY), 2)), "run.shots='0,2'"])
    spec = {"probe_learner": "dual-adv", "preconditions": {"source_only_target": ">=0"}}
    bench = prepare(cfg, tmp_path)
    test = bench.test_set
    blank = replace(test, images=np.zeros_like(test.images), masks=np.zeros_like(test.masks))
    facts = [experiment.preconditions(b, spec, [0])["facts"] for b in (bench, replace(bench, test_set=blank))]
    oracle = {"oracle_target", "oracle_gap"}
    assert set(experiment.ROUTING_FACTS) <= set(facts[0])
    assert {k: v for k, v in facts[0].items() if k not in oracle} == {
        k: v for k, v in facts[1].items() if k not in oracle
    }
    assert facts[0]["oracle_target"] != facts[1]["oracle_target"]


def test_collapse_conditions():
    spec = {
        "comparisons": [],
        "must_collapse": ["adaptseg @ 0"],
        "must_not_collapse": ["adaptseg-control @ 0", "adaptseg-balanced @ 0"],
    }
    dice = [0.3, 0.4, 0.35]
    holds = (
        _rows("adaptseg", dice, 0.001)
        + _rows("adaptseg-control", dice, 0.009)
        + _rows("adaptseg-balanced", dice, 0.008)
    )
    assert experiment.judge(spec, holds, MET)["holds"]
    control_collapses_too = (
        _rows("adaptseg", dice, 0.001)
        + _rows("adaptseg-control", dice, 0.001)
        + _rows("adaptseg-balanced", dice, 0.008)
    )
    assert experiment.judge(spec, control_collapses_too, MET)["holds"] is False


def test_a_draw_moves_every_phantom_seed_and_the_split():
    cfg = resolve_config(None, ["data.source='phantom:cap?seed=1000&noise_sigma_hu=20'", "data.target='phantom:covid'"])
    same = experiment.with_draw(cfg, 0)
    assert same == cfg
    moved = experiment.with_draw(cfg, 2)
    step = 2 * experiment.DRAW_STRIDE
    assert moved["data"]["source"] == f"phantom:cap?seed={1000 + step}&noise_sigma_hu=20"
    assert moved["data"]["target"] == f"phantom:covid?seed={step}"
    assert moved["data"]["split"]["seed"] == cfg["data"]["split"]["seed"] + 2
    assert moved["data"]["phantom"]["seed"] == cfg["data"]["phantom"]["seed"] + step
    with pytest.raises(ValueError, match="phantom"):
        experiment.with_draw({**cfg, "data": {**cfg["data"], "target": "data/semiseg"}}, 1)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_preset_names_registered_learners_and_measurable_preconditions(name):
    user = load_toml(ROOT / "configs" / "scenarios" / f"{name}.toml")
    spec = user.pop("control")
    cfg = resolve_config(None, [])
    assert spec["claim"] and spec["comparisons"] or spec.get("must_collapse")
    for text in spec["comparisons"]:
        a, b, k = experiment.parse_comparison(text)
        assert learners.get(a) and learners.get(b) and k >= 0
    facts = set(experiment.FACTS)
    if "conf_threshold" in learners.get(spec["probe_learner"]).defaults:
        facts |= set(experiment.ROUTING_FACTS)
    rules = [spec["preconditions"], *spec.get("preconditions_at", {}).values()]
    assert set(spec.get("preconditions_at", {})) <= {str(k) for k in (0, 1, 5, 20)}
    for key, rule in (item for r in rules for item in r.items()):
        assert key in facts and rule[:2] in (">=", "<=") and float(rule[2:]) == float(rule[2:])
    assert int(user["run"]["seeds"]) >= 10  # a verdict needs power (issue #22)
    assert user["data"]["source"] != user["data"]["target"]
    assert learners.get(spec["probe_learner"]).family == "adversarial"
    assert cfg


def test_progress_resumes_the_same_run_and_refuses_another(tmp_path):
    import argparse

    cfg = resolve_config(None, [])
    cfg["control"] = {"claim": "x"}
    args = argparse.Namespace(scenario="scanner-shift", draw=0, set=[])
    first = experiment.Progress(tmp_path, args, cfg)
    first.save_preconditions({"checks": {}, "facts": {"a": 1.0}})
    first.add({"seed": 0, "learner": "adaptseg", "k": 0, "dice": 0.5})
    again = experiment.Progress(tmp_path, args, cfg)
    assert again.preconditions == {"checks": {}, "facts": {"a": 1.0}}
    assert again.rows == [{"seed": 0, "learner": "adaptseg", "k": 0, "dice": 0.5}]
    with pytest.raises(SystemExit, match="belongs to another run"):
        experiment.Progress(tmp_path, argparse.Namespace(scenario="scanner-shift", draw=1, set=[]), cfg)
