"""A run directory holds one benchmark configuration; resuming into it with another is refused."""

from __future__ import annotations

from pathlib import Path

from fewshot_transfer.config import load_toml, run_identity


def check_run_dir(out: Path, cfg: dict) -> None:
    """Refuse to resume into a run dir whose identity sections differ (results would mix)."""
    saved = Path(out) / "config.toml"
    if not saved.is_file():
        return
    old = run_identity(load_toml(saved))
    new = run_identity(cfg)
    if old != new:
        diff = sorted(
            f"{sec}.{key}"
            for sec in set(old) | set(new)
            for key in set(old.get(sec, {})) | set(new.get(sec, {}))
            if old.get(sec, {}).get(key) != new.get(sec, {}).get(key)
        )
        raise ValueError(
            f"{out} already holds a run with a different configuration ({', '.join(diff)} differ); "
            "use another --out, or delete that directory to start over"
        )
