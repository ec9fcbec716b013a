"""Extra report sections appended to ``leaderboard.md`` when the run allows them.

A section is a function ``(rows, records) -> str | None`` registered with
:func:`section`; it returns Markdown, or None when the run lacks what it needs (e.g. the
transfer-vs-meta comparison needs both finetune and maml cells).
"""

from __future__ import annotations

from typing import Callable

Section = Callable[[list[dict], list[dict]], "str | None"]
SECTIONS: list[Section] = []


def section(fn: Section) -> Section:
    """Register a report section (decorator)."""
    SECTIONS.append(fn)
    return fn


def render_sections(rows: list[dict], records: list[dict]) -> list[str]:
    """Markdown of every section that applies to this run."""
    import fewshot_transfer.learners as learners

    learners.available()  # learner modules may register sections on import
    out = []
    for fn in SECTIONS:
        text = fn(rows, records)
        if text:
            out.append(text)
    return out
