"""Bring your own learner: a file outside the package runs through ``ftbench run`` / ``ftbench tune``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fewshot_transfer
from fewshot_transfer import learners
from fewshot_transfer.cli import main
from fewshot_transfer.harness import report

from conftest import TINY

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_learner.py"


@pytest.fixture
def clean_registry():
    """Plugins registered by a test are removed afterwards (registry, report sections, import cache)."""
    learners.available()
    saved = (dict(learners.REGISTRY), list(report.SECTIONS), dict(learners._plugins), learners._loaded)
    yield
    learners.REGISTRY.clear()
    learners.REGISTRY.update(saved[0])
    report.SECTIONS[:] = saved[1]
    learners._plugins.clear()
    learners._plugins.update(saved[2])
    learners._loaded = saved[3]


@pytest.fixture
def plugin_file(tmp_path) -> Path:
    """The example learner, written to a folder outside the package."""
    path = tmp_path / "outside" / "my_learner.py"
    path.parent.mkdir()
    path.write_text(EXAMPLE.read_text())
    return path


def _cells(out: Path) -> dict[tuple[str, int], dict]:
    recs = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    return {(r["learner"], r["seed"]): r for r in recs}


@pytest.mark.integration
def test_run_with_a_plugin_file(tmp_path, plugin_file, clean_registry):
    out = tmp_path / "run"
    args = [
        "run",
        *TINY,
        "--plugin",
        str(plugin_file),
        "--shots",
        "2",
        "--learners",
        "finetune,entropy-min",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "learners.entropy-min.entropy_weight=0",
    ]
    assert main(args) == 0
    cells = _cells(out)
    plugin, base = cells[("entropy-min", 0)], cells[("finetune", 0)]
    assert plugin["status"] == "ok" and plugin["family"] == "semi"
    # Extra term off -> exactly finetune's training (the shared loop's control by construction).
    assert plugin["metrics"] == base["metrics"]
    assert "## entropy-min" in (out / "leaderboard.md").read_text()  # the plugin's report section
    config = (out / "config.toml").read_text()
    assert f"plugins = [{json.dumps(str(plugin_file))}]" in config
    # The run directory's config reloads the plugin: rerunning from it finds every cell done.
    assert main(["run", "--config", str(out / "config.toml"), "--no-progress"]) == 0


@pytest.mark.integration
def test_the_plugin_example_passes_the_learner_checks(tmp_path, plugin_file, clean_registry):
    """The checks every built-in passes (tests/test_registry.py), run the way a plugin author
    would: smoke fit, its declared control equal to finetune bit for bit, the term not vacuous."""
    from fewshot_transfer.testing import check_learner

    learners.load_plugins([str(plugin_file)])
    done = check_learner("entropy-min", work_dir=tmp_path / "check")
    assert done == [
        "entropy-min: fit at k = 1, finite predictions",
        "entropy-min: mechanism on != entropy-min-control at k = 1",
        "entropy-min: entropy-min-control == finetune bit for bit at k = 1",
    ]


@pytest.mark.integration
def test_tune_with_a_plugin_file(tmp_path, plugin_file, clean_registry):
    out = tmp_path / "tune"
    args = [
        "tune",
        "entropy-min",
        "--plugin",
        str(plugin_file),
        *TINY,
        "--set",
        "train.steps=3",
        "--shots",
        "2",
        "--episodes",
        "1",
        "--trials",
        "2",
        "--pruner",
        "none",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    best = (out / "best.toml").read_text()
    assert "[learners.entropy-min]" in best and "entropy_weight" in best and str(plugin_file) in best


def test_plugin_by_module_name(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "ftb_mod_plugin.py").write_text(
        textwrap.dedent("""
        from fewshot_transfer import Learner, register

        @register
        class ByName(Learner):
            name = "by-module-name"
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    learners.load_plugins(["ftb_mod_plugin"])
    assert "by-module-name" in learners.available()
    learners.load_plugins(["ftb_mod_plugin"])  # a second load is a no-op, not a duplicate registration


def test_broken_plugin_names_file_line_and_exception(tmp_path, capsys, clean_registry):
    bad = tmp_path / "broken.py"
    bad.write_text("import math\n\nraise KeyError('no such thing')\n")
    assert main(["run", *TINY, "--plugin", str(bad), "--out", str(tmp_path / "r"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"learner plugin {bad} failed to import at {bad}:3: KeyError" in err
    with pytest.raises(learners.PluginError, match=r"syntax.py:1: SyntaxError"):
        (tmp_path / "syntax.py").write_text("def (:\n")
        learners.load_plugins([str(tmp_path / "syntax.py")])
    with pytest.raises(learners.PluginError, match="no such file"):
        learners.load_plugins([str(tmp_path / "missing.py")])
    with pytest.raises(learners.PluginError, match=r"module 'no_such_plugin_mod'.*ModuleNotFoundError"):
        learners.load_plugins(["no_such_plugin_mod"])


def test_plugin_cannot_take_a_builtin_name(tmp_path, clean_registry):
    clash = tmp_path / "clash.py"
    clash.write_text(
        "from fewshot_transfer import Learner, register\n\n@register\nclass F(Learner):\n    name = 'finetune'\n"
    )
    with pytest.raises(learners.PluginError, match="registered twice"):
        learners.load_plugins([str(clash)])


def test_entry_point_plugins_load_with_the_builtins(tmp_path, monkeypatch, clean_registry):
    dist = tmp_path / "ftb_ep_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ftb-ep-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{learners.ENTRY_POINT_GROUP}]\ndemo = ftb_ep_demo\n")
    (tmp_path / "ftb_ep_demo.py").write_text(
        "from fewshot_transfer import Learner, register\n\n@register\nclass D(Learner):\n    name = 'ep-demo'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    learners._loaded = False
    assert "ep-demo" in learners.available()
    (tmp_path / "ftb_ep_demo.py").write_text("raise ImportError('needs a GPU library')\n")
    sys.modules.pop("ftb_ep_demo", None)
    learners._loaded = False
    with pytest.raises(learners.PluginError, match=r"entry point demo = ftb_ep_demo \(from ftb-ep-demo\).*ImportError"):
        learners.available()


def test_public_api_is_lazy_and_complete():
    names = set(fewshot_transfer.__all__) - {"__version__"}
    assert {
        "Learner",
        "Control",
        "register",
        "LearnerContext",
        "Params",
        "Segmenter",
        "train_steps",
        "train_supervised",
        "StepHooks",
        "slice_batches",
        "labeled_batches",
        "unlabeled_batches",
        "section",
    } <= names
    for name in names:
        assert getattr(fewshot_transfer, name) is not None
    probe = "import sys, fewshot_transfer; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fewshot_transfer.nope  # noqa: B018


def test_importer_entry_point_adds_a_kind(tmp_path, monkeypatch, capsys):
    from fewshot_transfer.data.errors import DatasetError
    from fewshot_transfer.data.importers import ENTRY_POINT_GROUP, import_dataset, layout_help

    from fixtures_datasets import build_folder

    dist = tmp_path / "ftb_toy_importer-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ftb-toy-importer\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntoy = ftb_toy_importer\nbroken = ftb_no_module\n")
    (tmp_path / "ftb_toy_importer.py").write_text(
        "from fewshot_transfer.data.importers.folder import plan\n\nLAYOUT = 'a toy layout (a CSV, as folder)'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert layout_help("toy") == "a toy layout (a CSV, as folder)"
    exp = build_folder(tmp_path / "src")
    report = import_dataset("toy", exp.root, tmp_path / "out")
    assert report.kind == "toy" and report.rows == len(exp.patients)
    with pytest.raises(
        DatasetError, match=r"importer plugin broken = ftb_no_module failed to import: ModuleNotFoundError"
    ):
        layout_help("broken")
    with pytest.raises(SystemExit):
        main(["data", "import", "--help"])
    assert "toy             plugin ftb_toy_importer" in capsys.readouterr().out


def test_a_learner_with_an_unknown_family_is_refused():
    """A typo'd family would silently get a plot panel of its own."""
    from fewshot_transfer.learners.base import Learner, register

    class Typo(Learner):
        name = "typo-family"
        family = "semi-supervised"

    with pytest.raises(ValueError, match="declares family 'semi-supervised'; use one of baseline, adversarial"):
        register(Typo)
