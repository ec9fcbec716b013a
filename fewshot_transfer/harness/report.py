"""Extra report sections appended to ``leaderboard.md`` when the run allows them.

A section is a function ``(rows, records) -> str | None`` registered with
:func:`section`; it returns Markdown, or None when the run lacks what it needs (e.g. the
transfer-vs-meta comparison needs both finetune and maml cells). Built-in sections live in
``harness/`` and are listed in ``SECTIONS`` below; a plugin
registers its own with :func:`section` (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable

from fewshot_transfer.harness.transfer_vs_meta import transfer_vs_meta

Section = Callable[[list[dict], list[dict]], "str | None"]
#: Built-in sections, in the order they are appended; plugins add theirs with :func:`section`.
SECTIONS: list[Section] = [transfer_vs_meta]


def section(fn: Section) -> Section:
    """Register a report section (decorator)."""
    SECTIONS.append(fn)
    return fn


def render_sections(rows: list[dict], records: list[dict]) -> list[str]:
    """Markdown of every section that applies to this run."""
    out = []
    for fn in SECTIONS:
        text = fn(rows, records)
        if text:
            out.append(text)
    return out
