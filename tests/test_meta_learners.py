"""Every meta-learner end to end through ``ftbench run`` on a tiny config, plus caching and the report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fewshot_transfer import learners
from fewshot_transfer.cli import main
from fewshot_transfer.harness.transfer_vs_meta import crossover, transfer_vs_meta
from fewshot_transfer.meta.training import MetaConfig, head_prefixes, task_sizes
from fewshot_transfer.models import UNet

META = ("maml", "fomaml", "reptile", "anil", "metasgd")
TINY = [
    "--set", "data.size=32", "--set", "model.base=4", "--set", "model.depth=3",
    "--set", "train.steps=5", "--set", "train.pretrain_steps=5",
    "--set", "data.phantom.source_patients=6", "--set", "data.phantom.target_patients=8",
    "--set", "data.phantom.slices_per_patient=6",
]


def budget(names=META, meta_steps=2, test_steps=3) -> list[str]:
    out = []
    for n in names:
        out += ["--set", f"learners.{n}.meta_steps={meta_steps}", "--set", f"learners.{n}.test_steps={test_steps}",
                "--set", f"learners.{n}.meta_batch=2"]
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run: finetune + every meta-learner, 1 seed, k = 1 and 2 (meta-training shared across k)."""
    out = tmp_path_factory.mktemp("meta-run")
    # a private data/model cache, so counting cached meta-models is not polluted by other tests
    rc = main(["run", "--learners", "finetune," + ",".join(META), *TINY, *budget(), "--seeds", "1", "--shots", "1,2",
               "--set", f'data.cache_dir="{out / "cache"}"', "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_registered_as_meta_family():
    names = learners.available()
    for n in META:
        assert n in names
        cls = learners.get(n)
        assert cls.family == "meta" and cls.uses_source and cls.uses_target


@pytest.mark.parametrize("name", META)
def test_every_meta_learner_runs_through_ftbench(tiny_run, name):
    for k in (1, 2):
        rec = json.loads((tiny_run / "cells" / f"{name}__k-{k}__seed-0.json").read_text())
        assert rec["status"] == "ok", rec.get("reason")
        assert rec["family"] == "meta"
        assert 0.0 <= rec["metrics"]["dice"] <= 1.0 or math.isnan(rec["metrics"]["dice"])
        assert rec["params"]["meta_steps"] == 2


def test_meta_training_is_cached_once_per_seed_across_k(tiny_run):
    cache = tiny_run / "cache" / "models"
    for name in META:
        assert len(list(cache.glob(f"meta-{name}-*.pt"))) == 1, name
    state = torch.load(next(cache.glob("meta-metasgd-*.pt")), weights_only=True)
    assert any(k.startswith("lr::") for k in state)  # Meta-SGD stores its learned rates


def test_report_section_in_leaderboard(tiny_run):
    md = (tiny_run / "leaderboard.md").read_text()
    assert "## Transfer vs meta-learning (finetune vs maml)" in md
    assert "Crossover:" in md and "| fomaml |" in md


def test_mix_target_makes_meta_training_k_specific(tmp_path):
    out = tmp_path / "mix"
    rc = main(["run", "--learners", "fomaml", *TINY, *budget(["fomaml"]), "--set", "learners.fomaml.mix_target=0.5",
               "--set", f'data.cache_dir="{tmp_path / "cache"}"', "--seeds", "1", "--shots", "1,2", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    # k=1 cannot form a target task (falls back to source-only meta-training); k=2 has its own model
    assert len(list((tmp_path / "cache" / "models").glob("meta-fomaml-*.pt"))) == 2


def test_search_spaces_declare_meta_hyperparameters():
    import optuna

    for name in META:
        cls = learners.get(name)
        study = optuna.create_study()
        trial = study.ask()
        space = cls.search_space(trial)
        assert {"inner_lr", "inner_steps", "meta_lr", "meta_steps", "test_steps"} <= set(space), name
        assert set(space) <= set(cls.defaults), name  # every searched key is a valid hyperparameter


def test_config_validation_and_helpers():
    with pytest.raises(ValueError, match="mix_target"):
        MetaConfig(mix_target=1.5)
    with pytest.raises(ValueError, match="init"):
        MetaConfig(init="imagenet")
    net = UNet(base=4, depth=3)
    assert head_prefixes("head", net) == ("head.",)
    assert head_prefixes("last_block", net) == ("decoders.1.", "head.")
    with pytest.raises(ValueError, match="head scope"):
        head_prefixes("body", net)


def test_crossover_rule():
    d = lambda m, lo, hi: {"mean": m, "lo": lo, "hi": hi, "n": 3, "p_value": 0.01}
    assert "no crossover" in crossover([("1", d(0.1, 0.05, 0.15)), ("5", d(0.0, -0.05, 0.05))])
    assert "finetune overtakes maml at k = 20" in crossover(
        [("1", d(0.05, -0.01, 0.11)), ("5", d(-0.01, -0.05, 0.03)), ("20", d(-0.1, -0.15, -0.05))]
    )
    assert "maml overtakes finetune at k = 5" in crossover([("1", d(-0.02, -0.1, 0.06)), ("5", d(0.1, 0.02, 0.18))])


def test_section_absent_without_both_learners():
    rec = {"learner": "finetune", "k": 1, "k_label": "1", "seed": 0, "status": "ok", "metrics": {"dice": 0.5}}
    assert transfer_vs_meta([], [rec]) is None


def test_task_sizes_shrink_to_fit(tmp_path):
    import numpy as np

    from fewshot_transfer.data.slices import SliceSet

    n = 8
    data = SliceSet(
        images=np.zeros((n, 4, 4), np.float32), masks=np.zeros((n, 4, 4), np.uint8), labeled=np.ones(n, bool),
        patients=np.array(["a"] * 6 + ["b"] * 2), slice_index=np.arange(n, dtype=np.int32),
        splits=np.array([""] * n), spacing=np.ones((n, 2), np.float32),
    )
    assert task_sizes(data, 5, 5) == (3, 3)
    assert task_sizes(data, 2, 3) == (2, 3)
