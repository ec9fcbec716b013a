"""The resolved run plan: structured ``tuned_from``, parameter origins, ``plan.json``."""

from __future__ import annotations

import json

import pytest

from fewshot_transfer.config import resolve_config, to_toml
from fewshot_transfer.harness.planning import run_plan, with_cells
from fewshot_transfer.harness.rundir import open_run
from fewshot_transfer.harness.store import upgrade_records
from fewshot_transfer.plan import StudyRef, TunedFrom
from fewshot_transfer.testing import TINY

OLD = (
    "scratch-k5 @ sqlite:///results/adversarial/tuning/study.db trial #7 (val Dice 0.7786); "
    "dual-adv-k0-source-val @ sqlite:///results/selection/selection-shots/tuning/study.db trial #3 "
    "(source-val Dice 0.6120, sampler seed 123456)"
)


def test_old_string_form_reads_back_to_the_same_text():
    tuned = TunedFrom.read(OLD)
    assert [s.study for s in tuned.studies] == ["scratch-k5", "dual-adv-k0-source-val"]
    assert tuned.studies[0].sampler_seed is None and tuned.studies[1].sampler_seed == 123456
    assert tuned.text == OLD and tuned.sampler_seed == 123456
    assert TunedFrom.read(tuned.to_json()) == tuned == TunedFrom.read(tuned.to_config())
    assert not TunedFrom.read("") and not TunedFrom.read(None)
    with pytest.raises(ValueError, match="not a study provenance line"):
        StudyRef.parse("finetune tuned somewhere")


def test_structured_tuned_from_survives_a_config_file(tmp_path):
    ref = StudyRef("finetune-k5", "sqlite:///x/study.db", 3, "val Dice", 0.123456789, 42)
    cfg = {**resolve_config(None, []), "tuned_from": TunedFrom((ref,)).to_config()}
    (tmp_path / "c.toml").write_text(to_toml(cfg))
    back = resolve_config(tmp_path / "c.toml")
    assert TunedFrom.read(back["tuned_from"]).studies == (ref,)


def test_old_records_are_upgraded_where_they_are_read():
    records = [{"learner": "scratch", "k": 5, "control": "", "tuned_from": OLD}, {"learner": "x", "control": ""}]
    up = upgrade_records(records)
    assert up[0]["tuned_from"][0]["study"] == "scratch-k5" and TunedFrom.read(up[0]["tuned_from"]).text == OLD
    assert "tuned_from" not in up[1]


def test_cell_entries_name_each_parameters_origin():
    cfg = resolve_config(None, [*TINY, "learners.dual-adv.lambda_adv=0.1"])
    study = {"storage": "s", "trial": 1, "score_name": "val Dice", "score": 0.5}
    cfg = {
        **cfg,
        "learners": {**cfg["learners"], "finetune@k=2": {"lr": 0.01}},  # what a study per k writes
        "tuned_from": {"finetune-k2": study},
    }
    shots = [("0", 0), ("2", 2)]
    untuned = with_cells(run_plan({**cfg, "tuned_from": ""}), ["dual-adv", "dual-adv-control"], shots)
    plan = with_cells(run_plan(cfg), ["dual-adv", "dual-adv-control", "finetune"], shots)
    adv = untuned.cell("dual-adv", "2").params
    assert (adv["lambda_adv"].value, adv["lambda_adv"].origin) == (0.1, "config")
    assert adv["lambda_adv"].key == "learners.dual-adv.lambda_adv"
    assert adv["steps"].origin == "config" and adv["steps"].key == "train.steps"
    assert adv["d_lr"].origin == "default"
    # A run with a study names it for every learner it holds a table for (as the string form did).
    assert plan.cell("dual-adv", "2").params["lambda_adv"].origin == "tuned"
    control = plan.cell("dual-adv-control", "0")
    assert control.control_of == "dual-adv" and control.params["lambda_adv"].value == 0.0
    assert plan.cell("dual-adv", "0").control == "dual-adv-control"
    tuned = plan.cell("finetune", "2")
    assert tuned.params["lr"].origin == "tuned" and tuned.params["lr"].study.study == "finetune-k2"
    assert tuned.selection_rule == "val" and tuned.tuned_from.text.startswith("finetune-k2 @ s trial #1")
    assert not plan.cell("finetune", "0").tuned_from  # no k = 0 table: code defaults there
    with pytest.raises(KeyError, match="no cell entry for scratch"):
        plan.cell("scratch", "2")


def test_open_run_writes_the_plan_it_runs(tmp_path):
    cfg = resolve_config(None, [*TINY, 'run.learners="finetune,dual-adv"', 'run.shots="0,2"'])
    bench = open_run(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert (
        {(c["learner"], c["k_label"]) for c in saved["cells"]}
        == {(c.learner, c.k_label) for c in bench.plan.cells}
        >= {("finetune", "2"), ("dual-adv", "0"), ("dual-adv-control", "0")}
    )
    assert saved["train"]["threshold"] == bench.plan.train.threshold and saved["config_hash"] == bench.plan.config_hash
    assert bench.controls == {"dual-adv-control": {0}}
