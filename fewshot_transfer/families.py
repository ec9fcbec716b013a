"""The learner families: one checked list for the registry, the plots' panels and the docs.

A learner's ``family`` picks its panel in the transfer-gain plot and its place in the
leaderboard order; an unknown family (a typo, or ``"semi-supervised"`` for ``"semi"``) would
silently get a panel of its own, so registering one is an error.
"""

from __future__ import annotations

#: Panel and leaderboard order.
FAMILIES: tuple[str, ...] = ("baseline", "adversarial", "meta", "semi")


def check_family(family: str, learner: str) -> str:
    """``family`` when it is one of :data:`FAMILIES`, else a ValueError naming the learner."""
    if family not in FAMILIES:
        raise ValueError(
            f"learner {learner!r} declares family {family!r}; use one of {', '.join(FAMILIES)} (semi = semi-supervised)"
        )
    return family
