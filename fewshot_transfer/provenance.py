"""What produced a number: the package version, git commit and a hash of the package sources,
and the machine's CPU kernel path and software.

Cells record both, model-cache keys include the source hash (a cached model is never reused
by different code), and leaderboards say when their cells came from different versions.
The kernel path matters because native CPU results are bit-for-bit reproducible only on the
same one: torch, oneDNN, MKL, numpy and glibc pick vectorised kernels by what the CPU offers
(AVX2, AVX-512, ...; and by vendor), their float rounding differs, and a few hundred
training steps amplify the difference. Portable mode (``portable.py``, recorded as each
cell's ``float_mode``) pins one path for every x86-64 CPU; then the software versions
recorded here are what must match.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path

from fewshot_transfer import __version__


@functools.cache
def code_version() -> dict:
    """Package version, git commit when available, and a hash of the package sources.

    Computed once per process (the sources do not change mid-run).
    """
    pkg = Path(__file__).parent  # this module sits at the package root
    h = hashlib.sha256()
    for p in sorted(pkg.rglob("*.py")):
        h.update(p.relative_to(pkg).as_posix().encode())
        h.update(p.read_bytes())
    commit = ""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=pkg, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": __version__, "git": commit, "source_sha": h.hexdigest()[:16]}


@functools.cache
def machine() -> dict:
    """CPU model, the vectorised-kernel level torch dispatches to, the torch build, numpy and the C library.

    Two native runs agree to the last bit only when these match (and the code and config do);
    two portable runs when the software does; `scripts/compare_runs.py` prints them when cells differ.
    """
    import numpy
    import torch

    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "libc": " ".join(platform.libc_ver()).strip(),
    }


def machines_of(records: list[dict]) -> list[str]:
    """The distinct machines a set of cell records names, as "CPU (capability, torch X)";
    cells from before the field name none."""
    return sorted(
        {
            f"{m.get('cpu', '?')} ({m.get('cpu_capability', '?')}, torch {m.get('torch', '?')})"
            for r in records
            if (m := r.get("provenance", {}).get("machine"))
        }
    )
