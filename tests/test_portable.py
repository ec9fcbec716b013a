"""Portable floats (issue #35): bits that do not depend on the x86-64 instruction set.

The end-to-end test emulates a CPU offering only SSE4.1 on this one (every library capped by
its own variable, glibc's libm by its tunables) and checks that a portable run gives the same
cells there as on the full CPU, while a native run does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot_transfer.cli import main
from fewshot_transfer.config import resolve_config, run_identity, to_toml
from fewshot_transfer.harness.leaderboard import header_meta
from fewshot_transfer.harness.rundir import check_run_dir
from fewshot_transfer.portable import NAME, NATIVE, enter, float_mode, modes_of, pinned, pinned_env

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import compare_runs  # noqa: E402

#: What a CPU offering only SSE4.1 would run: torch's default kernels, oneDNN, MKL, numpy and
#: glibc's libm at their SSE levels.
SSE41 = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "DNNL_MAX_CPU_ISA": "SSE41",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-FMA4,-F16C",
}


def test_pinned_env_adds_the_setting_and_keeps_what_is_there():
    env = pinned_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.cpu.hwcaps=-AVX", "OTHER": "1"})
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == "COMPATIBLE" and env["OTHER"] == "1"
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-FMA4"
    assert pinned(env) and pinned_env(env) == env
    assert not pinned({}) and not pinned({**env, "MKL_CBWR": "AUTO"})


def test_a_python_call_cannot_switch_a_running_torch_to_portable(capsys):
    if pinned():
        pytest.skip("this test process was started with the portable settings")
    with pytest.raises(RuntimeError, match="before the process starts"):
        enter(restart=True)  # torch is imported here: too late, even where a restart is allowed
    assert main(["run", "--portable", *TINY, "--out", "unused"]) == 1
    assert "run.portable needs its kernel settings" in capsys.readouterr().err
    assert float_mode() == NATIVE


def test_portable_is_part_of_the_run_identity_only_when_on(tmp_path):
    native, portable = resolve_config(), resolve_config(None, ["run.portable=true"])
    assert "run" not in run_identity(native)  # native identities, studies and grids stay as they were
    assert run_identity(portable)["run"] == {"portable": True}
    (tmp_path / "config.toml").write_text(to_toml(native))
    with pytest.raises(ValueError, match="run.portable"):
        check_run_dir(tmp_path, portable)
    (tmp_path / "config.toml").write_text(to_toml(portable))
    with pytest.raises(ValueError, match="run.portable"):
        check_run_dir(tmp_path, native)
    check_run_dir(tmp_path, portable)


def _record(mode: str | None, dice: float = 0.5) -> dict:
    prov = {"machine": {"cpu": "X", "cpu_capability": "DEFAULT", "torch": "2", "numpy": "2", "libc": "glibc 2"}}
    if mode is not None:
        prov["float_mode"] = mode
    return {"selection": "defaults", "metrics": {"dice": dice}, "per_slice": {"dice": [dice]}, "provenance": prov}


def test_header_names_the_float_mode():
    assert header_meta([_record(NAME)])["floats"].startswith(f"{NAME} (pinned x86-64 baseline")
    assert header_meta([_record(None)])["floats"].startswith("native")  # cells from before the field
    assert header_meta([_record(NAME), _record(NATIVE)])["floats"].startswith("MIXED")
    assert modes_of([_record(NAME), _record(None), {"selection": "defaults"}]) == [NATIVE, NAME]


def _write_run(path: Path, *records: dict) -> Path:
    (path / "cells").mkdir(parents=True)
    for i, rec in enumerate(records):
        (path / "cells" / f"cell{i}.json").write_text(json.dumps({"status": "ok", **rec}))
    return path


def test_compare_runs_promises_bits_only_between_portable_runs(tmp_path, capsys):
    portable_a = _write_run(tmp_path / "pa", _record(NAME, 0.5))
    portable_b = _write_run(tmp_path / "pb", _record(NAME, 0.6))
    native = _write_run(tmp_path / "n", _record(NATIVE, 0.6))
    assert compare_runs.main([str(portable_a), str(portable_a)]) == 0
    assert f"float mode: {portable_a}: {NAME}" in capsys.readouterr().out
    assert compare_runs.main([str(portable_a), str(portable_b)]) == 1
    assert "both runs are portable" in capsys.readouterr().out
    assert compare_runs.main([str(portable_a), str(native)]) == 1
    out = capsys.readouterr().out
    assert "float modes differ" in out and "native" in out


def _run(out: Path, env: dict[str, str], *flags: str) -> None:
    """``ftbench run`` as a command (a new process: portable mode restarts it with the pinned settings)."""
    cmd = [sys.executable, "-m", "fewshot_transfer.cli", "run", *TINY, "--learners", "scratch", "--shots", "2"]
    cmd += ["--seeds", "2", "--controls", "none", "--no-progress", "--out", str(out), *flags]
    done = subprocess.run(cmd, env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.integration
def test_portable_cells_are_the_same_under_every_instruction_set(tmp_path, capsys):
    """The same cells on the full CPU in two workers and on an emulated SSE4.1 CPU in one
    process; a native run gives other cells on the emulated CPU (the caps do change floats)."""
    _run(tmp_path / "portable", {}, "--portable", "--jobs", "2")
    _run(tmp_path / "portable-sse41", SSE41, "--portable", "--jobs", "1")
    _run(tmp_path / "native", {}, "--jobs", "1")
    _run(tmp_path / "native-sse41", SSE41, "--jobs", "1")
    cells = [json.loads(p.read_text()) for p in sorted((tmp_path / "portable" / "cells").glob("*.json"))]
    assert len(cells) == 2
    assert {c["provenance"]["float_mode"] for c in cells} == {NAME}
    assert {c["provenance"]["machine"]["cpu_capability"] for c in cells} == {"DEFAULT"}
    assert f"- **floats**: {NAME}" in (tmp_path / "portable" / "leaderboard.md").read_text()
    assert compare_runs.main([str(tmp_path / "portable"), str(tmp_path / "portable-sse41")]) == 0
    assert compare_runs.main([str(tmp_path / "native"), str(tmp_path / "native-sse41")]) == 1
    assert compare_runs.main([str(tmp_path / "portable"), str(tmp_path / "native")]) == 1
    assert "float modes differ" in capsys.readouterr().out
