"""Cold vs. cached load times of the dataset loader.

Cases: phantom domains exported to NIfTI (40 x 12 and 167 x 12 slices at 64 px) and a
folder of 2,000 PNG slices at 256 px resized to 64 px. "cold" decodes every file and
writes the cache; "cached" is a second call in the same process; "new process" is a fresh
``python`` loading from the cache: the load itself, the imports (mostly numpy) and the
wall time including interpreter start.

    python benchmarks/bench_loader.py [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fewshot_transfer.data.dataset_format import DatasetSpec, ManifestRow, write_manifest, write_spec
from fewshot_transfer.data.export import write_phantom_dataset
from fewshot_transfer.data.loader import load_dataset
from fewshot_transfer.data.phantom import DEFAULT_PROFILES, generate_volumes


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _rerun(root: Path, cache: Path, size: int) -> tuple[float, float, float]:
    """Fresh interpreter: (wall time of the whole process, import time, cached-load time)."""
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from fewshot_transfer.data.loader import load_dataset\n"
        "t1 = time.perf_counter()\n"
        f"d = load_dataset({str(root)!r}, size={size}, cache_dir={str(cache)!r})\n"
        "print(t1 - t0, time.perf_counter() - t1)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    imports, load = (float(v) for v in out.strip().splitlines()[-1].split())
    return time.perf_counter() - start, imports, load


def phantom_case(work: Path, patients: int, slices: int, size: int) -> tuple[Path, dict]:
    volumes, t_gen = _timed(lambda: generate_volumes("covid", patients, size=size, n_slices=slices))
    root = work / f"phantom-{patients}x{slices}"
    _, t_export = _timed(
        lambda: write_phantom_dataset(volumes, root, name="phantom-covid", profile=DEFAULT_PROFILES["covid"])
    )
    return root, {"generate": t_gen, "export": t_export}


def png_case(work: Path, n: int, native: int) -> tuple[Path, dict]:
    from PIL import Image

    root = work / f"png-{n}x{native}"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    start = time.perf_counter()
    for i in range(n):
        img = rng.integers(0, 256, size=(native, native), dtype=np.uint8)
        mask = np.zeros((native, native), np.uint8)
        mask[native // 3 : native // 2, native // 4 : native // 2] = 255 * (i % 2)
        Image.fromarray(img).save(root / "images" / f"{i}.png", compress_level=1)
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
        rows.append(ManifestRow(image=f"images/{i}.png", mask=f"masks/{i}.png", patient=f"p{i // 20}"))
    write_spec(root, DatasetSpec(name="png", intensity="windowed-uint8", lesion_labels=(255,)))
    write_manifest(root, rows)
    return root, {"write": time.perf_counter() - start}


def measure(name: str, root: Path, setup: dict, cache: Path, size: int) -> None:
    data, cold = _timed(lambda: load_dataset(root, size=size, cache_dir=cache))
    _, cached = _timed(lambda: load_dataset(root, size=size, cache_dir=cache))
    wall, imports, rerun = _rerun(root, cache, size)
    entry = max(cache.glob("*.npz"), key=lambda p: p.stat().st_mtime)
    extra = ", ".join(f"{k} {v:.2f}s" for k, v in setup.items())
    print(
        f"{name:22s} {len(data):5d} slices | cold {cold:6.2f} s | cached {cached * 1000:5.0f} ms | "
        f"new process: load {rerun * 1000:4.0f} ms + imports {imports * 1000:4.0f} ms, {wall:4.2f} s wall | "
        f"cache {entry.stat().st_size / 2**20:4.1f} MiB | {extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the 40 x 12 phantom")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root, setup = phantom_case(work, 40, 12, 64)
        measure("phantom 40 x 12 @64", root, setup, work / "cache", 64)
        if args.quick:
            return
        root, setup = phantom_case(work, 167, 12, 64)
        measure("phantom 167 x 12 @64", root, setup, work / "cache", 64)
        root, setup = png_case(work, 2000, 256)
        measure("png 2000 @256 -> 64", root, setup, work / "cache", 64)


if __name__ == "__main__":
    main()
