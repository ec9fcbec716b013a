"""CLI command groups; each module exposes ``register(subparsers)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

LOG_WIDTH = 160


def console() -> Console:
    """A rich Console for command output.

    In a terminal rich follows the terminal's width; written to a file or a CI log it would
    assume 80 columns and squeeze the leaderboard table (empty rank / k columns, truncated
    Dice), so there it renders at ``LOG_WIDTH`` unless ``COLUMNS`` says otherwise.
    """
    import os

    from rich.console import Console

    c = Console()
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(width=LOG_WIDTH)
    return c
