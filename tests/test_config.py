"""Config layering: defaults < file < overrides; the quick profile file equals the defaults."""

from pathlib import Path

import pytest

from fewshot_transfer.config import DEFAULTS, apply_overrides, load_toml, resolve_config, to_toml

ROOT = Path(__file__).resolve().parents[1]


def test_quick_toml_is_the_default():
    assert resolve_config(ROOT / "configs" / "quick.toml") == DEFAULTS


def test_full_toml_resolves():
    cfg = resolve_config(ROOT / "configs" / "full.toml")
    assert cfg["data"]["size"] >= 128


def test_real_toml_resolves():
    cfg = resolve_config(ROOT / "configs" / "real.toml")
    assert cfg["data"]["size"] > DEFAULTS["data"]["size"] and cfg["data"]["split"]["folds"] >= 2
    assert 0 <= cfg["data"]["split"]["fold"] < cfg["data"]["split"]["folds"]


def test_layering_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nsteps = 7\n[learners.finetune]\nlr = 0.01\n")
    cfg = resolve_config(f, ["train.steps=9", "run.shots='1,all'", "data.include_negative=0.5"])
    assert cfg["train"]["steps"] == 9
    assert cfg["learners"]["finetune"]["lr"] == 0.01
    assert cfg["run"]["shots"] == "1,all"
    assert cfg["data"]["include_negative"] == 0.5
    assert cfg["model"] == DEFAULTS["model"]


def test_round_trip_toml(tmp_path):
    cfg = apply_overrides(DEFAULTS, ["learners.dual-adv.lambda_adv=0.01"])
    p = tmp_path / "x.toml"
    p.write_text(to_toml(cfg))
    assert load_toml(p) == cfg


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.stpes=3", "unknown config key 'train.stpes'"),
        ("trainsteps", "section.key=value"),
        ("data.split.folds=1", "'data.split.folds' must be 0 .no folds. or >= 2"),
        ("data.split.fold=2", "'data.split.fold' = 2 needs 'data.split.folds' >= 2"),
        ("data.split.folds=-1", "'data.split.folds' must be >= 0"),
        ("train.steps=0", "'train.steps' must be >= 1"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(None, [override])


def test_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        resolve_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ValueError, match="bad.toml is not valid TOML"):
        resolve_config(bad)


def test_fold_keys():
    cfg = resolve_config(None, ["data.split.folds=5", "data.split.fold=4"])
    assert (cfg["data"]["split"]["folds"], cfg["data"]["split"]["fold"]) == (5, 4)
    with pytest.raises(ValueError, match=r"'data.split.fold' must be in 0..4"):
        resolve_config(None, ["data.split.folds=5", "data.split.fold=5"])


def test_cli_refuses_zero_steps_and_negative_shots(capsys):
    """k = 0 is valid (no target labels), a negative k is not; 0 target steps would score an untrained net."""
    from fewshot_transfer.cli import main
    from fewshot_transfer.harness.benchmark import resolve_grid_shots

    assert resolve_grid_shots("0,2", 10) == [("0", 0), ("2", 2)]
    with pytest.raises(ValueError, match="k must be at least 0"):
        resolve_grid_shots("0,-3", 10)
    assert main(["run", "--set", "train.steps=0", "--out", "unused"]) == 1
    assert "config key 'train.steps' must be >= 1, got 0" in capsys.readouterr().err
