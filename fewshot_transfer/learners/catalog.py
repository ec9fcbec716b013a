"""The learners and their hyperparameter tables as text: ``ftbench learners`` and ``docs/learners.md``.

Both are read from the registry and each learner's ``hparams``, so the help and the docs
cannot drift from the code (a test regenerates the doc and compares).
"""

from __future__ import annotations

import sys
from typing import Any

from fewshot_transfer.learners.base import Learner
from fewshot_transfer.learners.hparams import HP

#: The command that rewrites the generated doc.
REGENERATE = "ftbench learners --markdown > docs/learners.md"
COLUMNS = ("name", "type", "default", "bounds", "search", "help")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = f"{value:.6g}"
        return text if any(c in text for c in ".en") else f"{text}.0"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _bounds(hp: HP) -> str:
    if not hp.bounded:
        return ""
    low = "" if hp.low is None else f">= {_value(hp.low)}"
    high = "" if hp.high is None else f"<= {_value(hp.high)}"
    return ", ".join(part for part in (low, high) if part)


def hparam_rows(cls: type[Learner]) -> list[tuple[str, ...]]:
    """One row per hyperparameter: name, type, default, bounds, search distribution, help."""
    return [
        (
            name,
            hp.type_name,
            "[train]" if hp.default is None else _value(hp.default),
            _bounds(hp),
            hp.search.describe() if hp.search is not None else "",
            hp.help,
        )
        for name, hp in cls.hparams.items()
    ]


def control_text(cls: type[Learner]) -> str:
    """The learner's control arm in words (``learners/controls.py``)."""
    if cls.control is None:
        return ""
    off = ", ".join(f"{key} = {_value(value)}" for key, value in cls.control.off.items())
    if cls.control.same_as:
        return f"{off} is {cls.control.same_as}" if off else cls.control.same_as
    return off


def learner_rows(classes: list[type[Learner]]) -> list[tuple[str, ...]]:
    """One row per learner: name, family, k = 0 support, control."""
    return [(c.name, c.family, "yes" if c.supports_k0 else "no", control_text(c)) for c in classes]


def summary(cls: type[Learner]) -> str:
    """The first paragraph of the learner's docstring (its module's when the class has none)."""
    doc = cls.__doc__ if "__doc__" in vars(cls) and cls.__doc__ else sys.modules[cls.__module__].__doc__
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows)]


def markdown(classes: list[type[Learner]]) -> str:
    """``docs/learners.md``: the learner list, then each learner's hyperparameter table."""
    lines = [
        "# Learners and their hyperparameters",
        "",
        f"Generated from each learner's `hparams` table; do not edit by hand (`{REGENERATE}`).",
        "A config overrides any default under `[learners.NAME]`; `[train]` means the run's",
        "`[train]` value. Bounds are checked before any work, on top of the generic rules",
        "(steps >= 0, sizes >= 1, rates > 0, shares in [0, 1]); `ftbench tune` searches the",
        "entries with a search distribution, in this order.",
        "",
        *_md_table(("learner", "family", "k = 0", "control (mechanism off)"), learner_rows(classes)),
    ]
    for cls in classes:
        lines += ["", f"## {cls.name}", ""]
        if text := summary(cls):
            lines += [text, ""]
        lines += _md_table(COLUMNS, hparam_rows(cls))
    return "\n".join(lines) + "\n"
