"""Control arms (issue #22): every learner beside the same learner and stream with its mechanism off.

Which row serves as a control, the controls' parameters, the run's control rows and their
mechanism gain. The bit-for-bit identity of every declared control with its ``same_as`` and
the non-vacuity of every mechanism are checked for the whole registry in
``tests/test_registry.py`` (``fewshot_transfer.testing``); the identities here are the
mechanism-specific ones, on the trained weights (every tensor of the state dict).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from fewshot_transfer import learners
from fewshot_transfer.cli import main
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.harness.leaderboard import build_rows
from fewshot_transfer.harness.planning import control_rows
from fewshot_transfer.harness.runner import plan_cells
from fewshot_transfer.learners.controls import control_row
from fewshot_transfer.testing import registered

from conftest import TINY

OVERRIDES = [TINY[i + 1] for i in range(0, len(TINY), 2)]
#: A tiny-backbone lr at which the 5 steps visibly move the weights (shared by every learner pinned).
LR = 0.002


def _cfg(extra: list[str] | None = None) -> dict:
    return resolve_config(None, [*OVERRIDES, "run.shots='0,2'", *(extra or [])])


def _weights(bench, name: str, k: int, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    ctx = bench.context(learners.get(name), k, seed)
    return {n: t.detach().clone() for n, t in learners.get(name)().fit(ctx).model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_every_learner_with_a_mechanism_names_its_control():
    """At the default parameters a learner whose control is ``same_as`` another learner is served
    by that learner's row (the parameters they share agree), every other one by its derived row;
    read off the registry, so a new learner is covered when it is registered."""
    cfg = _cfg()
    with_control = [n for n in registered() if learners.get(n).control is not None]
    assert len(with_control) >= 20  # every built-in mechanism declares one (scratch and source-only do not)
    for name in with_control:
        same_as = learners.get(name).control.same_as
        assert control_row(name, 2, cfg) == (same_as or f"{name}-control"), name
        # at k = 0 same_as (scratch or finetune) has no cell: a k = 0 learner's control is its own row
        expected_k0 = f"{name}-control" if learners.get(name).supports_k0 else None
        assert control_row(name, 0, cfg) == expected_k0, name
    assert control_row("scratch", 2, cfg) is None and control_row("source-only", 0, cfg) is None
    assert "adaptseg-control" not in learners.available()  # --learners all runs learners, --controls adds these
    assert "adaptseg-control" in learners.available(controls=True)


def test_a_control_takes_the_learners_own_tuned_parameters():
    cfg = _cfg(["learners.adaptseg.lr=0.0042", "learners.adaptseg.lambda_adv=0.05", "learners.maml.lr=0.0031"])
    p = learners.get("adaptseg-control").resolve_params(cfg)
    assert p.lr == 0.0042 and p.lambda_adv == 0.0
    assert dict(p) == {**dict(learners.get("adaptseg").resolve_params(cfg)), "lambda_adv": 0.0}
    # maml tuned to another lr than finetune's: finetune's row is no longer its control
    assert control_row("maml", 2, cfg) == "maml-control"
    assert learners.get("maml-control").resolve_params(cfg).meta_steps == 0
    with pytest.raises(ValueError, match=r"\[learners.adaptseg-control\] is not read"):
        learners.get("adaptseg-control").resolve_params(_cfg(["learners.adaptseg-control.lr=0.1"]))
    with pytest.raises(ValueError, match="is not tuned"):
        learners.get("adaptseg-control").search_space(None)


def test_control_rows_are_added_once_and_only_where_needed(tmp_path):
    cfg = _cfg()
    bench = prepare(cfg, tmp_path)
    names = ["finetune", "maml", "reptile", "pseudo-label-cap", "dual-adv"]
    extra = control_rows(names, "all", [0, 2], cfg)
    # the meta-learners and pseudo-label-cap share finetune (requested) at k = 2; scratch serves finetune
    assert extra == {"scratch": {2}, "pseudo-label-cap-control": {0}, "dual-adv-control": {0, 2}}
    cells = plan_cells(bench, [*names, *extra], [0], only_at=extra)
    assert [(c.learner, c.k) for c in cells if c.learner == "pseudo-label-cap-control"] == [
        ("pseudo-label-cap-control", 0)
    ]
    assert control_rows(names, "dual-adv", [0, 2], cfg) == {"dual-adv-control": {0, 2}}
    assert control_rows(names, "none", [0, 2], cfg) == {}
    # NAME@K: the control at that k only (the default run's dual-adv@0: its reference at k = 0)
    assert control_rows(names, "dual-adv@0", [0, 2], cfg) == {"dual-adv-control": {0}}
    assert control_rows(names, "dual-adv@0,dual-adv@2", [0, 2], cfg) == {"dual-adv-control": {0, 2}}
    assert control_rows(names, "dual-adv@5", [0, 2], cfg) == {}
    # a control that is a requested learner is not added again (reptile's is finetune)
    assert control_rows(names, "reptile,pseudo-label-cap", [0, 2], cfg) == {"pseudo-label-cap-control": {0}}
    with pytest.raises(ValueError, match="after '@' give a k"):
        control_rows(names, "dual-adv@one", [0, 2], cfg)
    with pytest.raises(ValueError, match="not among the run's learners"):
        control_rows(names, "adaptseg", [0, 2], cfg)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["dual-adv", "adaptseg-balanced"])
def test_the_control_skips_a_discriminator_that_could_not_reach_the_segmentor(tmp_path, monkeypatch, name):
    """lambda_adv = 0 trains no discriminator; a game played at weight 0 every step leaves the
    segmentor exactly where the control does (D never touches its streams). adaptseg-balanced
    also has non-adversarial terms (the aux output's segmentation loss, the lesion-fraction
    prior): the control keeps them, so it is the learner with only its adversary off."""
    from fewshot_transfer.learners.adversarial import AdversarialHooks

    torch.set_num_threads(1)
    cfg = _cfg([f"learners.{name}.lr={LR}", f"learners.{name}.lambda_adv=0.5"])
    bench = prepare(cfg, tmp_path)
    controls = {}
    for k in (0, 2):
        controls[k] = _weights(bench, f"{name}-control", k)
        monkeypatch.setattr(AdversarialHooks, "lam", lambda self, step: 0.0)
        played = _weights(bench, name, k)  # D warmed up and stepped, its term weighted 0
        monkeypatch.undo()
        assert _same(controls[k], played), k
    if name == "adaptseg-balanced":  # the kept terms are not vacuous
        bare = _cfg([f"learners.{name}.lr={LR}", f"learners.{name}.prior_weight=0.0"])
        assert not _same(_weights(prepare(bare, tmp_path / "bare"), f"{name}-control", 0), controls[0])


@pytest.mark.integration
def test_run_with_controls_shows_the_mechanism_gain(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "run",
            *TINY,
            "--shots",
            "1",
            "--seeds",
            "2",
            "--learners",
            "finetune,joint",
            "--controls",
            "--jobs",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "2 control arms (scratch, joint-control)" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    by = {(r["learner"], r["seed"]): r for r in records}
    assert by[("joint", 0)]["control"] == "joint-control" and by[("joint-control", 0)]["control_of"] == "joint"
    rows = {r["learner"]: r for r in build_rows(records)}
    for name, ctl in (("joint", "joint-control"), ("finetune", "scratch")):
        diffs = [by[(name, s)]["metrics"]["dice"] - by[(ctl, s)]["metrics"]["dice"] for s in (0, 1)]
        assert math.isclose(rows[name]["mech"], sum(diffs) / 2, abs_tol=1e-12)
        assert rows[name]["control"] == ctl and math.isfinite(rows[name]["mech_p_holm"])
    md = (out / "leaderboard.md").read_text()
    assert "mechanism gain vs own control" in md and "(vs joint-control)" in md


def test_class_probe_reads_a_class_conditional_shift():
    """Lesion features shifted between domains, background identical: the lesion-only probe
    separates them, the background-only one is at chance, and a uniform draw misses the lesions."""
    from fewshot_transfer.adaptation.probe import class_probe, domain_probe

    gen = torch.Generator().manual_seed(0)

    def domain(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
        masks = torch.zeros(8, 1, 16, 16)
        masks[:, :, 4:7, 4:7] = 1.0  # ~3.5 % lesion, as in CT
        images = torch.randn(8, 1, 16, 16, generator=gen) + masks * (2.0 + shift)
        return images, masks

    (xs, ms), (xt, mt) = domain(0.0), domain(3.0)
    read = lambda x: torch.cat([x, x.abs()], 1)  # noqa: E731
    out = class_probe(read, (xs, ms), (xt, mt), seed=0)
    assert out["lesion"] > 0.75, out
    assert abs(out["background"] - 0.5) < 0.1, out
    assert out["balanced"] > 0.6, out
    assert domain_probe(read, xs, xt, seed=0) < 0.6  # uniform positions: ~97 % background, near chance
    # no lesion at the read-out resolution: no lesion reading rather than a meaningless one
    empty = class_probe(read, (xs, torch.zeros_like(ms)), (xt, mt), seed=0)
    assert empty["lesion"] is None and empty["balanced"] is None


@pytest.mark.integration
def test_every_adversarial_cell_records_per_class_probes(tmp_path):
    from fewshot_transfer.harness.runner import run_cell
    from fewshot_transfer.harness.store import CellSpec

    torch.set_num_threads(1)
    bench = prepare(_cfg(), tmp_path)
    record = run_cell(bench, CellSpec(seed=0, k=0, k_label="0", learner="dual-adv-control"))
    probe = record["probe"]
    assert probe["layer"]
    for when in ("before", "after"):
        assert 0.0 <= probe[when]["background"] <= 1.0
    assert "probe" not in run_cell(bench, CellSpec(seed=0, k=2, k_label="2", learner="finetune"))


def test_training_replicates_share_the_episode_and_average_before_pairing(tmp_path):
    from fewshot_transfer.harness.leaderboard import average_replicates
    from fewshot_transfer.harness.runner import run_cell
    from fewshot_transfer.harness.store import CellSpec, training_seed

    torch.set_num_threads(1)
    assert training_seed(3, 0) == 3 and training_seed(3, 1) != training_seed(4, 1)
    bench = prepare(_cfg([f"learners.scratch.lr={LR}"]), tmp_path)
    cells = plan_cells(bench, ["scratch"], [0], replicates=3)
    assert sorted((c.k, c.replicate) for c in cells) == [(2, 0), (2, 1), (2, 2)]
    assert cells[1].cell_id.endswith("__rep-1") and "__rep" not in cells[0].cell_id  # replicate 0 keeps its name
    ctx0 = bench.context(learners.get("scratch"), 2, 0, replicate=0)
    ctx1 = bench.context(learners.get("scratch"), 2, 0, replicate=1)
    assert ctx0.support.patients.tolist() == ctx1.support.patients.tolist()  # same shots
    assert not torch.equal(ctx0.new_model().head.weight, ctx1.new_model().head.weight)  # other initialisation
    recs = [run_cell(bench, CellSpec(seed=0, k=2, k_label="2", learner="scratch", replicate=r)) for r in (0, 1)]
    assert recs[0]["replicate"] == 0 and recs[1]["replicate"] == 1
    assert recs[0]["support_patients"] == recs[1]["support_patients"]
    (avg,) = average_replicates(recs)
    assert avg["replicates"] == 2
    assert math.isclose(avg["metrics"]["dice"], (recs[0]["metrics"]["dice"] + recs[1]["metrics"]["dice"]) / 2)


def test_cells_written_before_control_arms_get_their_control_from_the_records(tmp_path):
    """Read through the store, old cells get the control the learners declared then, decided by
    the parameters the run's cells record (no config, no learner registry)."""
    from fewshot_transfer.harness.store import load_records

    schedule = {"steps": 200, "lr": 0.006, "batch_size": 8}

    def rec(name: str, seed: int, dice: float, k: int = 2, **params) -> None:
        record = {
            "learner": name,
            "k": k,
            "k_label": str(k),
            "seed": seed,
            "status": "ok",
            "family": "meta",
            "supports_k0": name == "dual-adv",
            "params": {**schedule, **params},
            "metrics": {"dice": dice, "dice_global": dice, "pred_fraction": 0.01, "true_fraction": 0.01, "hd95": 1.0},
        }
        (tmp_path / "cells").mkdir(exist_ok=True)
        (tmp_path / "cells" / f"{name}__k-{k}__seed-{seed}.json").write_text(json.dumps(record))

    for s in range(3):
        rec("finetune", s, 0.5 + 0.01 * s)
        rec("maml", s, 0.52 + 0.01 * s + 0.001 * s * s, meta_steps=100)
        rec("metasgd", s, 0.5, lr=0.003, meta_steps=100)  # tuned away from finetune's lr
        rec("dual-adv", s, 0.4, k=0, lambda_adv=0.01)
        rec("anil-control", s, 0.4)  # the learner anil's derived control replaced
    records = load_records([tmp_path])
    assert all("control" not in json.loads(p.read_text()) for p in (tmp_path / "cells").glob("*.json"))
    rows = {r["learner"]: r for r in build_rows(records) if r["k"] == 2}
    assert rows["maml"]["control"] == "finetune"
    assert math.isclose(rows["maml"]["mech"], 0.02 + 0.001 * (0 + 1 + 4) / 3)
    assert rows["metasgd"]["control"] == "metasgd-control" and math.isnan(rows["metasgd"]["mech"])
    assert rows["finetune"]["control"] == "scratch" and math.isnan(rows["finetune"]["mech"])  # no scratch cells
    assert rows["anil-control"]["control"] == ""
    k0 = {r["learner"]: r for r in build_rows(records) if r["k"] == 0}
    assert k0["dual-adv"]["control"] == "dual-adv-control"
    # a recorded control is kept as it is
    path = tmp_path / "cells" / "finetune__k-2__seed-0.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "control": "recorded"}))
    assert [r["control"] for r in load_records([tmp_path]) if r["learner"] == "finetune" and r["seed"] == 0] == [
        "recorded"
    ]
