"""``ftbench report`` on hand-made run directories: sections, failed and collapsed cells, the
gallery's fallbacks (images from the data, the recompute command), bad input, no torch."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot_transfer.cli import main
from fewshot_transfer.config import resolve_config, to_toml
from fewshot_transfer.data.loader import load_run_domain
from fewshot_transfer.data.splits import save_split, split_target
from fewshot_transfer.harness import gallery
from fewshot_transfer.harness.html_report import write_report
from fewshot_transfer.plan import DataPlan

from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32


def _overrides(args: list[str]) -> list[str]:
    return [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--set"]


def _record(learner: str, k: int, seed: int, dice: float, run: Path, **extra) -> dict:
    label = "any" if learner == "source-only" else str(k)
    cell_id = f"{learner}__k-{label}__seed-{seed}"
    per_slice = [float("nan"), dice - 0.1, dice, dice + 0.05, float("nan"), dice]
    return {
        "cell_id": cell_id,
        "learner": learner,
        "family": "baseline",
        "supports_k0": learner == "source-only",
        "control": "scratch" if learner == "finetune" else "",
        "k": 0 if label == "any" else k,
        "k_label": label,
        "seed": seed,
        "status": "ok",
        "support_pool_size": 20,
        "selection": "defaults",
        "selection_rule": "defaults",
        "resolution": "native",
        "metrics": {"dice": dice, "dice_global": dice, "pred_fraction": 0.02, "true_fraction": 0.02, "hd95": 3.0},
        "per_slice": {"patient": ["p"] * 6, "dice": per_slice},
        "provenance": {
            "code": {"git": "abc1234", "source_sha": "feedfacefeedface"},
            "data": {"source": "s1", "target": "t1", "split": "x1"},
            "config_hash": "c0ffee",
            "machine": {"cpu": "Test CPU", "cpu_capability": "AVX2", "torch": "2.13.0+cpu"},
            "device": "cpu",
            "threads": 1,
        },
        "command": f"ftbench run --config {run / 'config.toml'} --learners {learner} --out {run}",
        **extra,
    }


def fake_run(tmp_path: Path, *, predictions: bool = True, gallery_file: bool = True) -> Path:
    """A run directory of scratch / finetune at k = 2 and source-only, 3 seeds, written by hand:
    finetune's seed 2 diverged, scratch's seed 1 collapsed."""
    run = tmp_path / "run"
    cells = run / "cells"
    cells.mkdir(parents=True)
    cfg = resolve_config(None, [*_overrides(TINY), 'run.shots="0,2"', f'run.out="{run}"'])
    (run / "config.toml").write_text(to_toml(cfg))
    records = []
    for seed in range(3):
        records.append(_record("source-only", 0, seed, 0.30 + 0.01 * seed, run))
        records.append(_record("scratch", 2, seed, 0.40 + 0.02 * seed, run))
        records.append(_record("finetune", 2, seed, 0.55 + 0.03 * seed, run))
    records[-1] = {**records[-1], "status": "failed", "reason": "training diverged: loss nan at step 3"}
    records[4]["metrics"] = {**records[4]["metrics"], "dice": 0.001, "pred_fraction": 0.0001}
    rows = np.array([0, 1, 2, 3, 5])
    rng = np.random.default_rng(0)
    for r in records:
        (cells / f"{r['cell_id']}.json").write_text(json.dumps(r))
        if predictions and r["status"] == "ok":
            pred = (rng.random((len(rows), SIZE, SIZE)) > 0.9).astype(np.uint8)
            np.savez_compressed(cells / f"{r['cell_id']}.pred.npz", rows=rows, pred=pred)
        curves = "phase,step,seg\ntarget,1,0.9\ntarget,2,0.7\n"
        (cells / f"{r['cell_id']}.curves.csv").write_text(curves)
    if gallery_file:
        truth = np.zeros((len(rows), SIZE, SIZE), np.uint8)
        truth[1:, 10:16, 10:16] = 1
        np.savez_compressed(
            run / gallery.GALLERY_FILE,
            rows=rows,
            image=(rng.random((len(rows), SIZE, SIZE)) * 255).astype(np.uint8),
            truth=truth,
            patient=np.array([f"p{i}" for i in rows]),
            lesion_fraction=truth.reshape(len(rows), -1).mean(1),
            rule=np.array(gallery.RULE),
            fingerprint=np.array("t1"),
        )
    return run


def _tuning_study(run: Path) -> None:
    """A study in RUN/tuning/study.db (``--protocol tuned``) with one complete and one pruned trial."""
    import optuna

    storage = f"sqlite:///{run / 'tuning' / 'study.db'}"
    (run / "tuning").mkdir()
    study = optuna.create_study(storage=storage, study_name="finetune-k2", direction="maximize")
    for value, pruned in ((0.5, False), (0.1, True)):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        trial.report(value, step=0)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else None, values=None if pruned else value)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(src) for src in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_of_a_run_with_a_failed_cell(tmp_path):
    run = fake_run(tmp_path)
    _tuning_study(run)
    path = write_report([run], tmp_path / "out")
    page = path.read_text()
    for anchor in ("leaderboard", "transfer", "seeds", "mechanism", "gallery", "problems", "curves"):
        assert f'id="{anchor}"' in page, anchor
    # Every figure is an embedded PNG that decodes; nothing is fetched from elsewhere.
    images = _images(page)
    assert len(images) >= 6
    for data in images:
        Image.open(io.BytesIO(data)).verify()
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # Header facts, sortable leaderboard per k, each row's reproduce command.
    for fact in ("scored at", "machine", "code", "data fingerprints", "selection rule", "hyperparameters"):
        assert f"<dt>{fact}</dt>" in page, fact
    assert 'id="leaderboard-k-2"' in page and 'class="sortable"' in page
    assert "--learners finetune" in page
    # The failed cell is listed with its reason, the collapsed one with why; both stay out of the means.
    assert "training diverged: loss nan at step 3" in page
    assert "scratch__k-2__seed-1" in page and "Dice 0.0010 &lt; 0.01" in page
    assert "finetune-k2 trial #1" in page
    assert "pruned after episode 0: reported 0.1000; median of the complete trials there 0.5000" in page
    # Mechanism gain of finetune over its control (scratch) with its Holm p, on the two ok seeds.
    table = page[page.index('id="mechanism"') :]
    assert "<td>finetune</td><td>scratch</td>" in table
    # The gallery: k = 2 by default, seed 0, with its stated slice rule.
    assert "Prediction gallery (k = 2, seed 0)" in page and gallery.RULE in page


def test_old_run_without_predictions_shows_the_recompute_command(tmp_path):
    run = fake_run(tmp_path, predictions=False, gallery_file=False)
    page = write_report([run], tmp_path / "out", gallery_k="2", gallery_seed=1).read_text()
    assert "No stored predictions" in page
    command = re.search(r"<pre>(mkdir -p [^<]*)</pre>", page).group(1)
    assert f"--out {run / gallery.RECOMPUTE_DIR}" in command and "--seeds 1," in command
    learners = re.search(r"--learners (\S+)", command).group(1)
    assert sorted(learners.split(",")) == ["finetune", "scratch", "source-only"] and "--shots 2" in command


def test_gallery_rule_spans_lesion_sizes():
    frac = np.array([0.0, 0.05, 0.0, 0.01, 0.02, 0.2, 0.03, 0.04, 0.1, 0.001])
    rows = gallery.choose_rows(frac)
    assert rows[0] == 0  # the first lesion-free slice
    assert rows[-1] == 5  # the largest lesion
    sizes = frac[rows[1:-1]]
    assert list(sizes) == sorted(sizes) and len(rows) == 6


@pytest.mark.parametrize("bad", ["missing", "file", "no-cells"])
def test_report_refuses_what_is_not_a_run(tmp_path, capsys, bad):
    target = tmp_path / "x"
    if bad == "file":
        target.write_text("hello")
    elif bad == "no-cells":
        target.mkdir()
    assert main(["report", str(target), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(target) in err and ("not a run directory" in err or "does not exist" in err)


def test_unknown_gallery_k_is_named(tmp_path, capsys):
    run = fake_run(tmp_path)
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--gallery-k", "7"]) == 1
    assert "--gallery-k 7 is not a k of these runs (they have k = 0, 2)" in capsys.readouterr().err


NO_TORCH = """
    import sys
    from fewshot_transfer.cli import main
    rc = main(["report", sys.argv[1], "--out", sys.argv[2]])
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "fewshot_transfer.learners")))
    print("LOADED", loaded)
    sys.exit(rc or (1 if loaded else 0))
"""


def test_report_imports_neither_torch_nor_the_learners(tmp_path):
    """An old run (predictions, no gallery.npz) on the phantom: its test images come back from
    the data through the loader, and nothing on the way imports torch or a learner."""
    run = fake_run(tmp_path, gallery_file=False)
    cache = tmp_path / "cache"
    cfg = resolve_config(None, [*_overrides(TINY), 'run.shots="0,2"', f'data.cache_dir="{cache}"', f'run.out="{run}"'])
    (run / "config.toml").write_text(to_toml(cfg))
    sp = cfg["data"]["split"]
    target = load_run_domain(DataPlan.from_table(cfg["data"]), "target")
    split = split_target(target, fractions=(sp["support"], sp["unlabeled"], sp["test"]), seed=sp["seed"])
    save_split(split, run / "split.json")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_TORCH), str(run), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout
    page = (tmp_path / "out" / "report.html").read_text()
    assert "loaded for this report" in page and gallery.LEGACY_RULE in page
