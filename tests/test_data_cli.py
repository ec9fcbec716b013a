"""``ftbench data info / import / phantom / preview`` through ``cli.main``."""

from __future__ import annotations

import json

import pytest

from fewshot_transfer.cli import main
from fewshot_transfer.data.dataset_format import read_manifest, read_spec

from fixtures_datasets import build_medseg, build_nifti_dataset


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")


def test_phantom_then_info(tmp_path, capsys):
    out = tmp_path / "covid"
    args = [
        "data",
        "phantom",
        "--domain",
        "covid",
        "--patients",
        "3",
        "--slices",
        "4",
        "--size",
        "32",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert len(read_manifest(out)) == 3
    assert "wrote phantom covid: 3 patients x 4 slices" in capsys.readouterr().out
    assert main(["data", "info", str(out), "--size", "32"]) == 0
    text = capsys.readouterr().out
    assert "phantom-covid" in text and "12 at 32x32 (12 labeled, 0 unlabeled)" in text
    assert "lesion fraction" in text and "splits" in text
    assert list((tmp_path / "cache" / "datasets").glob("*.npz"))


def test_phantom_intensity_and_force(tmp_path, capsys):
    out = tmp_path / "cap"
    args = ["data", "phantom", "--domain", "cap", "--patients", "2", "--slices", "2", "--size", "32", "--out", str(out)]
    assert main(args + ["--intensity", "windowed-uint8"]) == 0
    assert read_spec(out).intensity == "windowed-uint8"
    assert main(args) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert read_spec(out).intensity == "hu"


def test_info_json_and_warnings(tmp_path, capsys):
    exp = build_nifti_dataset(tmp_path / "ds", unlabeled=1)
    assert main(["data", "info", str(exp.root), "--size", "32", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["patients"] == 4 and info["labeled"] == 12 and info["unlabeled"] == 4
    assert info["splits"]["train"]["patients"] == 2 and info["splits"]["test"]["slices"] == 4
    assert 0 < info["positive_share"] < 1
    assert not any("pixel spacing" in w for w in info["warnings"])


def test_import_medseg_then_info_says_patients_unknown(tmp_path, capsys):
    src = build_medseg(tmp_path / "src").root
    out = tmp_path / "medseg"
    assert main(["data", "import", "medseg", str(src), "--out", str(out), "--lesion-labels", "1,2,3"]) == 0
    text = capsys.readouterr().out
    assert "imported medseg: 8 manifest rows (6 labeled)" in text and f"ftbench data info {out}" in text
    assert read_spec(out).lesion_labels == (1, 2, 3)
    assert main(["data", "info", str(out), "--size", "32"]) == 0
    assert "patients unknown: each slice is its own group" in capsys.readouterr().out


def test_import_check_and_bad_labels(tmp_path, capsys):
    src = build_medseg(tmp_path / "src").root
    assert main(["data", "import", "medseg", str(src), "--out", str(tmp_path / "o"), "--check", "--size", "32"]) == 0
    assert "lesion-positive" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "import", "medseg", str(src), "--out", str(tmp_path / "p"), "--lesion-labels", "ggo"])
    assert exit_info.value.code == 2
    assert "comma-separated" in capsys.readouterr().err


def test_preview_dir_and_phantom(tmp_path, capsys):
    exp = build_nifti_dataset(tmp_path / "ds")
    png = tmp_path / "grid.png"
    args = ["data", "preview", str(exp.root), "covid", "--out", str(png), "--n", "4", "--size", "32", "--patients", "2"]
    assert main(args) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {png}" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ftbench: error:") and "missing" in err
    assert main(["data", "import", "msd", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "dataset.json" in capsys.readouterr().err


@pytest.mark.parametrize("sub", [[], ["info"], ["import"], ["preview"], ["phantom"]])
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", *sub, "--help"])
    assert exit_info.value.code == 0
    assert "usage: ftbench data" in capsys.readouterr().out


def test_data_without_subcommand_prints_help(capsys):
    assert main(["data"]) == 2
    assert "SUBCOMMAND" in capsys.readouterr().out
