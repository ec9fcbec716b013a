"""Every meta-learner end to end through ``ftbench run`` on a tiny config, ANIL's adaptation, the
meta-validation summary, Reptile's interpolation, Meta-SGD's clamped rates, caching and the
report. The protocol's controls (0 meta-steps is finetune, bit for bit) are checked with every
learner's in tests/test_registry.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re

import pytest
import torch

from fewshot_transfer import learners
from fewshot_transfer.cli import main
from fewshot_transfer.config import resolve_config
from fewshot_transfer.harness.benchmark import prepare
from fewshot_transfer.harness.transfer_vs_meta import crossover, transfer_vs_meta
from fewshot_transfer.meta import training as mt
from fewshot_transfer.meta.engine import inner_adapt, module_params
from fewshot_transfer.meta.training import MetaConfig, head_prefixes, task_sizes
from fewshot_transfer.models import UNet
from fewshot_transfer.testing import registered
from fewshot_transfer.training import Params, slice_batches, train_steps

from conftest import TINY as TINY_ARGS

META = tuple(registered("meta"))
TINY = [
    "--set",
    "data.size=32",
    "--set",
    "model.base=4",
    "--set",
    "model.depth=3",
    "--set",
    "train.steps=5",
    "--set",
    "train.pretrain_steps=5",
    "--set",
    "data.phantom.source_patients=6",
    "--set",
    "data.phantom.target_patients=8",
    "--set",
    "data.phantom.slices_per_patient=6",
]


def budget(names=META, meta_steps=2) -> list[str]:
    out = []
    for n in names:
        out += ["--set", f"learners.{n}.meta_steps={meta_steps}", "--set", f"learners.{n}.meta_batch=2"]
    return out + ["--set", "learners.maml-fewstep.test_steps=3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run: finetune + every meta-learner, 1 seed, k = 1 and 2 (meta-training shared across k)."""
    out = tmp_path_factory.mktemp("meta-run")
    # a private data/model cache, so counting cached meta-models is not polluted by other tests
    rc = main(
        [
            "run",
            "--learners",
            "finetune," + ",".join(META),
            *TINY,
            *budget(),
            "--seeds",
            "1",
            "--shots",
            "1,2",
            "--set",
            f'data.cache_dir="{out / "cache"}"',
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_registered_as_meta_family():
    assert META, "the registry lists no learner of this family"
    names = learners.available(controls=True)
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
        curves = (tiny_run / "cells" / f"{name}__k-{k}__seed-0.curves.csv").read_text()
        assert "meta-val" in curves  # meta-validation loss before / after, in every cell


def test_meta_training_is_cached_once_per_seed_across_k(tiny_run):
    cache = tiny_run / "cache" / "models"
    for name in META:
        own = [
            p for p in cache.glob(f"meta-{name}-*.pt") if re.fullmatch(rf"meta-{re.escape(name)}-[0-9a-f]+\.pt", p.name)
        ]
        assert len(own) == 1, name
    assert not list(cache.glob("meta-anil-control-*.pt"))  # the control does not meta-train
    state = torch.load(next(cache.glob("meta-metasgd-*.pt")), weights_only=True)
    assert any(k.startswith("lr::") for k in state)  # Meta-SGD stores its learned rates


def test_report_section_in_leaderboard(tiny_run):
    md = (tiny_run / "leaderboard.md").read_text()
    assert "## Transfer vs meta-learning (finetune vs maml)" in md
    assert "Crossover:" in md and "| fomaml |" in md
    assert "| anil | " in md and "anil-control" in md


def test_mix_target_makes_meta_training_k_specific(tmp_path):
    out = tmp_path / "mix"
    rc = main(
        [
            "run",
            "--learners",
            "fomaml",
            *TINY,
            *budget(["fomaml"]),
            "--set",
            "learners.fomaml.mix_target=0.5",
            "--set",
            f'data.cache_dir="{tmp_path / "cache"}"',
            "--seeds",
            "1",
            "--shots",
            "1,2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    # k=1 cannot form a target task (falls back to source-only meta-training); k=2 has its own model
    assert len(list((tmp_path / "cache" / "models").glob("meta-fomaml-*.pt"))) == 2


def test_search_spaces_declare_meta_hyperparameters():
    import optuna

    for name in META:
        cls = learners.get(name)
        study = optuna.create_study()
        space = cls.search_space(study.ask())
        assert {"inner_steps", "meta_lr", "meta_steps"} <= set(space), name
        assert set(space) <= set(cls.defaults), name  # every searched key is a valid hyperparameter


def test_config_validation_and_helpers():
    with pytest.raises(ValueError, match="mix_target"):
        MetaConfig(mix_target=1.5)
    with pytest.raises(ValueError, match="init"):
        MetaConfig(init="imagenet")
    with pytest.raises(ValueError, match="meta_opt"):
        MetaConfig(meta_opt="rmsprop")
    assert MetaConfig().inner_opt == "adam" and MetaConfig(adaptation="fewstep").inner_opt == "sgd"
    assert (
        MetaConfig(lr=0.002).inner_rate == 0.002 and MetaConfig(adaptation="fewstep", inner_lr=0.05).inner_rate == 0.05
    )
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
        images=np.zeros((n, 4, 4), np.float32),
        masks=np.zeros((n, 4, 4), np.uint8),
        labeled=np.ones(n, bool),
        patients=np.array(["a"] * 6 + ["b"] * 2),
        slice_index=np.arange(n, dtype=np.int32),
        splits=np.array([""] * n),
        spacing=np.ones((n, 2), np.float32),
    )
    assert task_sizes(data, 5, 5) == (3, 3)
    assert task_sizes(data, 2, 3) == (2, 3)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    overrides = [TINY_ARGS[i + 1] for i in range(0, len(TINY_ARGS), 2)] + ["train.steps=12", "run.shots='1,3'"]
    return prepare(resolve_config(None, overrides), tmp_path_factory.mktemp("meta-bench"))


def _ctx(bench, name: str, k: int = 3, seed: int = 0, **params):
    ctx = bench.context(learners.get(name), k, seed=seed)
    return dataclasses.replace(ctx, params=Params({**ctx.params, **params}))


@pytest.mark.parametrize("name", ["anil", "anil-control"])
def test_anil_head_adapts_and_predictions_change_with_k(bench, name):
    """ANIL's test-time loop moves the head (and only the head): predictions move away from
    the init's and differ between k = 1 and k = 3; the body stays at the (meta-trained) init."""
    extra = {"meta_steps": 2, "meta_batch": 2} if name == "anil" else {}
    probs, heads = [], []
    for k in (1, 3):
        ctx = _ctx(bench, name, k=k, steps=60, **extra)
        init, _ = mt.meta_trained(
            ctx, name, MetaConfig.from_params(ctx.params, adapt=("head.",), meta_steps=ctx.params.get("meta_steps", 0))
        )
        before = ctx.segmenter(init).predict_proba(bench.test_set.images)
        init_params = {n: p.detach().clone() for n, p in init.named_parameters()}
        seg = learners.get(name)().fit(ctx)
        after = dict(seg.model.named_parameters())
        for n, p in init_params.items():
            assert torch.equal(p, after[n]) == (not n.startswith("head.")), n
        heads.append(after["head.weight"].detach().clone())
        probs.append(seg.predict_proba(bench.test_set.images))
        assert float(abs(probs[-1] - before).mean()) > 0.01  # the head update is not a no-op
        seg_curve = [r["seg"] for r in ctx.curves.rows if r["phase"] == "target"]
        assert seg_curve[-1] < seg_curve[0]
    assert float((heads[0] - heads[1]).abs().max()) > 1e-4
    assert float(abs(probs[0] - probs[1]).mean()) > 1e-5


def test_meta_validation_summary_and_flag(bench, caplog):
    ctx = _ctx(bench, "fomaml", meta_steps=3, meta_batch=2)
    learners.get("fomaml")().fit(ctx)
    s = ctx.summary["meta"]
    assert s["val_loss_before"] != s["val_loss_after"] and s["init_shift_rel"] > 0 and s["val_tasks"] >= 1
    assert s["improved"] == (s["val_loss_after"] < s["val_loss_before"])
    cfg = MetaConfig(meta_steps=3)
    with caplog.at_level(logging.WARNING):
        mt._record(ctx, "fomaml", cfg, {"val_loss_before": 0.5, "val_loss_after": 0.6})
    assert ctx.summary["meta"]["improved"] is False
    assert "did not lower the meta-validation loss" in caplog.text


def test_reptile_is_the_interpolation_update(bench):
    """One meta-step: θ ← θ + ε (mean adapted φ − θ), not an Adam step on θ − φ."""
    eps = 0.5
    ctx = _ctx(bench, "reptile", meta_steps=1, meta_batch=2, meta_lr=eps)
    cfg = MetaConfig.from_params(ctx.params, algorithm="reptile", first_order=True)
    theta = module_params(ctx.source_model())
    tasks = mt.TaskStream(ctx, cfg, salt=mt.zlib.crc32(b"reptile") % 10_000).next()
    phis = [
        inner_adapt(
            ctx.source_model(),
            theta,
            torch.cat([t.x_support, t.x_query]),
            torch.cat([t.y_support, t.y_query]),
            steps=cfg.inner_steps,
            lr=cfg.lr,
            opt="adam",
            first_order=True,
        )
        for t in tasks
    ]
    state = mt.run_meta_training(ctx, "reptile", cfg)
    for n, v in theta.items():
        expected = v + eps * (sum(phi[n] for phi in phis) / len(phis) - v)
        assert torch.allclose(state[n], expected, atol=1e-6), n


def test_metasgd_rates_clamped_and_scaling_rule(bench):
    """Rates never go below 0 however hard the outer loop pushes; at test time each element's
    update is clamp(α, 0) / lr times finetune's (α = lr everywhere: no rescaling at all)."""
    ctx = _ctx(bench, "metasgd", meta_steps=3, meta_batch=2, meta_lr=0.05)
    cfg = MetaConfig.from_params(ctx.params, learn_lr=True)
    state = mt.run_meta_training(ctx, "metasgd", cfg)
    rates = {k[4:]: v for k, v in state.items() if k.startswith("lr::")}
    assert rates and all(float(v.min()) >= 0 for v in rates.values())
    assert any(float((v == 0).float().mean()) > 0 for v in rates.values())  # the clamp was needed
    lr = cfg.lr
    assert mt.test_rate_scale({"a": torch.full((2,), lr)}, cfg) is None
    scale = mt.test_rate_scale({"a": torch.tensor([2 * lr, -lr, 0.5 * lr])}, cfg)
    assert torch.allclose(scale["a"], torch.tensor([2.0, 0.0, 0.5]))
    model = ctx.source_model()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    hooks = mt.RateHooks(
        model,
        {n: torch.zeros_like(p) if n.startswith("head.") else torch.ones_like(p) for n, p in model.named_parameters()},
    )
    train_steps(ctx, model, slice_batches(ctx, ctx.support, 4), steps=2, lr=lr, phase="target", hooks=hooks)
    for n, p in model.named_parameters():
        assert torch.equal(p, init[n]) == n.startswith("head.") or n == "aux_head.weight" or n == "aux_head.bias", n


def test_section_uses_reptile_when_the_run_has_no_maml():
    recs = [
        {
            "learner": name,
            "family": "meta" if name == "reptile" else "baseline",
            "k": k,
            "k_label": str(k),
            "seed": seed,
            "status": "ok",
            "metrics": {"dice": dice + 0.01 * seed},
        }
        for name, dice in (("finetune", 0.5), ("reptile", 0.6))
        for k in (1, 5)
        for seed in range(3)
    ]
    text = transfer_vs_meta([], recs)
    assert text is not None and "finetune vs reptile" in text and "reptile − finetune" in text
    assert "maml" not in text
