"""Claims judging (fewshot_transfer.harness.claims, ``ftbench claims``, scripts/judge_claims.py):
paired comparisons per draw, Holm over the table, verdicts over draws."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fewshot_transfer.cli import main as ftbench
from fewshot_transfer.harness import claims as jc

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("judge_claims", ROOT / "scripts" / "judge_claims.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)

BASE = [0.50, 0.55, 0.60, 0.52, 0.58, 0.51, 0.57, 0.54, 0.59, 0.53]


def _records(name: str, dice: list[float], k: int = 1, replicate: int = 0) -> list[dict]:
    return [
        {"learner": name, "k": k, "seed": s, "replicate": replicate, "status": "ok", "metrics": {"dice": d}}
        for s, d in enumerate(dice)
    ]


def _draw(gain: float) -> list[dict]:
    """finetune = scratch + gain + a little noise (noise alone, centred on 0, when gain is 0)."""
    noise = [0.02 * (-1) ** i for i in range(10)] if gain == 0 else [0.001 * (i % 3) for i in range(10)]
    up = [d + gain + e for d, e in zip(BASE, noise)]
    return _records("scratch", BASE) + _records("finetune", up) + _records("source-only", [0.2] * 10, k=0)


CLAIMS = [{"name": "transfer", "comparisons": ["finetune - scratch @ 1"]}]


@pytest.mark.parametrize(
    ("gains", "expected"),
    [
        ((0.05, 0.04), "supported"),
        ((-0.05, -0.04), "reversed"),
        ((0.05, 0.0), "not replicated"),
        ((0.0, 0.0), "no effect detected"),
    ],
)
def test_verdicts_need_the_same_significant_direction_on_every_draw(gains, expected):
    (row,) = jc.judge(CLAIMS, {str(i): _draw(g) for i, g in enumerate(gains)})
    assert row["verdict"] == expected
    assert len(row["draws"]) == 2


def test_source_only_serves_every_k_and_replicates_are_averaged_per_seed():
    records = _records("source-only", [0.2] * 10, k=0) + _records("adaptseg", [0.3] * 10, k=0)
    records += _records("adaptseg", [0.5] * 10, k=0, replicate=1)  # replicate mean 0.4
    table = jc.dice_by_seed(records)
    c = jc.compare(table, "adaptseg - source-only @ 0")
    assert c["n"] == 10 and c["mean"] == pytest.approx(0.2)


def test_holm_spans_the_whole_table_and_missing_rows_are_incomplete():
    claims = [{"name": "a", "comparisons": ["finetune - scratch @ 1", "maml - finetune @ 1"]}]
    rows = jc.judge(claims, {"0": _draw(0.05)})
    assert rows[1]["verdict"] == "incomplete" and rows[1]["draws"][0]["n"] == 0
    p = rows[0]["draws"][0]["p_value"]
    assert rows[0]["draws"][0]["p_holm"] == pytest.approx(min(1.0, 2 * p))  # the missing one still counts


def test_command_line_writes_the_table_and_its_numbers(tmp_path):
    for name, gain in (("d0", 0.05), ("d1", 0.04)):
        cells = tmp_path / name / "cells"
        cells.mkdir(parents=True)
        for i, r in enumerate(_draw(gain)):
            (cells / f"{r['learner']}__{i}.json").write_text(json.dumps(r))
    claims = tmp_path / "claims.toml"
    claims.write_text('[[claim]]\nname = "transfer"\ncomparisons = ["finetune - scratch @ 1"]\n')
    out = tmp_path / "out" / "claims.md"
    script.main(
        ["--claims", str(claims), "--draw", f"0={tmp_path / 'd0'}", "--draw", f"1={tmp_path / 'd1'}", "--out", str(out)]
    )
    assert "| transfer | finetune - scratch @ 1 |" in out.read_text() and "supported" in out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["rows"][0]["verdict"] == "supported" and np.isfinite(data["rows"][0]["bound"])
    with pytest.raises(SystemExit, match="NAME=RUN_DIR"):
        script.main(["--claims", str(claims), "--draw", "nowhere", "--out", str(out)])
    # `ftbench claims` is the same judging, recording its own command.
    again = tmp_path / "again.md"
    assert (
        ftbench(
            [
                "claims",
                str(claims),
                "--draw",
                f"0={tmp_path / 'd0'}",
                "--draw",
                f"1={tmp_path / 'd1'}",
                "--out",
                str(again),
            ]
        )
        == 0
    )
    assert again.read_text().split("\n")[4:] == out.read_text().split("\n")[4:]
    assert "Command (from the repository root): `ftbench claims " in again.read_text()


def _write_run(run: Path, records: list[dict]) -> None:
    cells = run / "cells"
    cells.mkdir(parents=True)
    for i, r in enumerate(records):
        (cells / f"{r['learner']}__{i}.json").write_text(json.dumps(r))


def test_a_draw_of_fold_runs_pairs_by_fold_and_seed(tmp_path):
    """Five folds x two seeds = ten paired units; fold f's seed s is compared with fold f's seed s only."""
    folds = tmp_path / "real"
    for f in range(5):
        base = [0.4 + 0.05 * f, 0.45 + 0.05 * f]  # folds differ much more than the gain
        records = _records("scratch", base, k=5) + _records("finetune", [b + 0.03 + 0.001 * f for b in base], k=5)
        _write_run(folds / f"fold{f}", records)
    records = jc.load_draw(str(folds))
    c = jc.compare(jc.dice_by_seed(records), "finetune - scratch @ 5")
    assert c["n"] == 10 and c["mean"] == pytest.approx(0.032) and c["p_value"] < 1e-6
    same = jc.load_draw(",".join(str(folds / f"fold{f}") for f in range(5)))
    assert jc.compare(jc.dice_by_seed(same), "finetune - scratch @ 5")["n"] == 10
    with pytest.raises(ValueError, match="neither a run directory"):
        jc.load_draw(str(tmp_path))


def test_comparisons_added_after_the_fact_are_marked(tmp_path):
    _write_run(tmp_path / "d0", _draw(0.05))
    claims = tmp_path / "claims.toml"
    claims.write_text(
        'title = "Real CT"\npreregistered = true\n'
        '[[claim]]\nname = "transfer"\ncomparisons = ["finetune - scratch @ 1"]\n'
        '[[claim]]\nname = "late"\nadded_after = "asked after the runs"\ncomparisons = ["finetune - source-only @ 1"]\n'
    )
    out = tmp_path / "claims.md"
    script.main(["--claims", str(claims), "--draw", f"0={tmp_path / 'd0'}", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# Real CT") and "| late (added after the fact: asked after the runs) |" in text
    assert "| transfer | finetune - scratch @ 1 |" in text


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("claims*.toml")), ids=lambda p: p.name)
def test_committed_claims_name_registered_learners(path):
    """A pre-registered comparison that names no registered learner (or control) could never be judged."""
    from fewshot_transfer import learners
    from fewshot_transfer.config import load_toml
    from fewshot_transfer.harness.stats import parse_comparison

    learners.available()
    claims = load_toml(path)["claim"]
    for claim in claims:
        for text in claim["comparisons"]:
            a, b, k = parse_comparison(text)
            assert a in learners.REGISTRY and b in learners.REGISTRY, text
            assert k >= 0
