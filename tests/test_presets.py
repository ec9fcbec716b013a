"""The benchmark presets (configs/presets/): each resolves, each GPU preset has a CPU smoke form with
the same task, and every one runs end to end on the phantom stand-ins with the overrides its header documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fewshot_transfer.cli import main
from fewshot_transfer.config import resolve_config

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "presets"
TASKS = ("limited-covid", "noncovid-transfer")
#: The task: what a smoke form must keep from its GPU preset.
TASK_KEYS = (("data", "source"), ("data", "target"), ("data", "split"), ("run", "learners"))
TINY_GPU = (
    "--device cpu --set data.size=32 --set model.base=4 --set model.depth=3 --set train.steps=10 "
    "--set train.pretrain_steps=10 --set train.batch_size=4 --set run.seeds=1"
).split()


def _phantom(cfg: dict) -> list[str]:
    out = ["--set", "data.target=phantom:covid"]
    if cfg["data"]["source"] != "phantom:cap":
        out += ["--set", "data.source=phantom:cap"]
    return out


@pytest.mark.parametrize("task", TASKS)
def test_preset_pairs_share_the_task(task):
    gpu = resolve_config(PRESETS / f"{task}.toml")
    smoke = resolve_config(PRESETS / f"{task}-smoke.toml")
    for section, key in TASK_KEYS:
        assert gpu[section][key] == smoke[section][key], f"{task}: {section}.{key} differs"
    assert gpu["run"]["device"] == "cuda" and smoke["run"]["device"] == "cpu"
    assert set(smoke["run"]["shots"].split(",")) <= set(gpu["run"]["shots"].split(","))
    assert gpu["data"]["split"]["support"] == 0.2 and gpu["data"]["split"]["test"] == 0.8  # 4 of 20 volumes


@pytest.mark.parametrize("name", [p.stem for p in sorted(PRESETS.glob("*.toml"))])
def test_header_documents_the_phantom_command(name):
    text = (PRESETS / f"{name}.toml").read_text()
    assert f"configs/presets/{name}.toml" in text and "data.target=phantom:covid" in text
    if not name.endswith("-smoke"):
        assert all(item in re.sub(r"\\\n#\s*", "", text) for item in TINY_GPU if item.startswith(("data.", "train.")))


@pytest.mark.integration
@pytest.mark.parametrize("name", [f"{t}{s}" for t in TASKS for s in ("-smoke", "")])
def test_preset_runs_on_the_phantom(name, tmp_path):
    path = PRESETS / f"{name}.toml"
    cfg = resolve_config(path)
    extra = [] if name.endswith("-smoke") else TINY_GPU
    args = ["run", "--config", str(path), *_phantom(cfg), *extra, "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    board = (tmp_path / "run" / "leaderboard.md").read_text()
    for learner in cfg["run"]["learners"].split(","):
        assert learner in board
