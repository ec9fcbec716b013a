"""What produced a number: the package version, git commit and a hash of the package sources.

Cells record it, model-cache keys include the source hash (a cached model is never reused
by different code), and leaderboards say when their cells came from different versions.
"""

from __future__ import annotations

import functools
import hashlib
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
