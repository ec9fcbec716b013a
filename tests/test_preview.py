"""preview_grid writes a readable PNG atomically and picks a fair mix of slices."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from fewshot_transfer.data.phantom import generate_slices
from fewshot_transfer.data.preview import pick_rows, preview_grid


@pytest.fixture(scope="module")
def slicesets():
    return [generate_slices("cap", 3, n_slices=6), generate_slices("covid", 3, n_slices=6)]


def test_writes_a_png_grid(tmp_path, slicesets):
    out = preview_grid(slicesets, tmp_path / "sub" / "grid.png", n_per_domain=4)
    assert out == tmp_path / "sub" / "grid.png"
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG"
        width, height = img.size
        pixels = np.asarray(img.convert("RGB"))
    assert width > 300 and height > 200
    assert pixels.std() > 20  # real content, not a blank canvas
    assert (pixels[..., 0].astype(int) - pixels[..., 1] > 100).any()  # the red lesion overlay
    assert sorted(p.name for p in out.parent.iterdir()) == ["grid.png"]  # no temp file left


def test_single_sliceset_without_lungs_and_few_rows(tmp_path, slicesets):
    small = replace(slicesets[1].subset(np.arange(3)), lungs=None)
    out = preview_grid(small, tmp_path / "one.png", n_per_domain=8)
    with Image.open(out) as img:
        assert img.size[0] > 100


def test_overwrites_atomically_and_cleans_up_on_failure(tmp_path, slicesets, monkeypatch):
    out = preview_grid(slicesets[0], tmp_path / "grid.png", n_per_domain=4)
    before = out.read_bytes()
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        preview_grid(slicesets, out, n_per_domain=4)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_pick_rows_mixes_positive_and_negative(slicesets):
    ss = slicesets[0]
    rows = pick_rows(ss, 8, np.random.default_rng(0))
    frac = ss.lesion_fraction()[rows]
    assert len(set(rows.tolist())) == 8
    assert (frac > 0).sum() == 6 and (frac == 0).sum() == 2
    assert len(set(ss.patients[rows].tolist())) == 3


def test_bad_arguments(tmp_path, slicesets):
    with pytest.raises(ValueError, match="at least one"):
        preview_grid([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="n_per_domain"):
        preview_grid(slicesets, tmp_path / "x.png", n_per_domain=0)
