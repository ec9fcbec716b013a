"""scripts/compare_runs.py: the check that the README command reproduces results/ cell for cell."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "scripts" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def _run(path: Path, cells: dict[str, float], capability: str = "AVX2") -> Path:
    (path / "cells").mkdir(parents=True)
    machine = {"cpu": "cpu", "cpu_capability": capability, "torch": "2.13.0"}
    for cid, dice in cells.items():
        rec = {
            "status": "ok",
            "metrics": {"dice": dice},
            "per_slice": {"dice": [dice]},
            "provenance": {"machine": machine},
        }
        (path / "cells" / f"{cid}.json").write_text(json.dumps(rec))
    return path


def test_shared_cells_must_agree_bit_for_bit(tmp_path, capsys):
    a = _run(tmp_path / "a", {"scratch__k-1__seed-0": 0.5, "scratch__k-1__seed-1": 0.6})
    b = _run(tmp_path / "b", {"scratch__k-1__seed-0": 0.5})
    assert compare_runs.main([str(a), str(b)]) == 0
    assert "1 cells in both, 1 only in" in capsys.readouterr().out
    c = _run(tmp_path / "c", {"scratch__k-1__seed-0": 0.5 + 1e-12})
    assert compare_runs.main([str(a), str(c)]) == 1
    assert "scratch__k-1__seed-0" in capsys.readouterr().out
    d = _run(tmp_path / "d", {"finetune__k-1__seed-0": 0.5})
    assert compare_runs.main([str(a), str(d)]) == 1  # nothing shared: nothing was checked


def test_differing_cells_name_differing_machines(tmp_path, capsys):
    a = _run(tmp_path / "a", {"scratch__k-1__seed-0": 0.5})
    b = _run(tmp_path / "b", {"scratch__k-1__seed-0": 0.6}, capability="AVX512")
    assert compare_runs.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "machines differ" in out and "AVX512" in out
    c = _run(tmp_path / "c", {"scratch__k-1__seed-0": 0.6})
    assert compare_runs.main([str(a), str(c)]) == 1
    assert "machines differ" not in capsys.readouterr().out
