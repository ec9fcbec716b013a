"""Model-selection rules: which labels choose a learner's hyperparameters (named in every row).

A tuned number is only as honest as the data that chose its settings (Oliver et al. 2018: a
validation set larger than the labeled training set overstates gains and misleads
selection). ``--protocol tuned --selection RULE`` picks one of:

* ``val``: a labeled validation split carved by patient from the target support pool. It
  holds far more labeled slices than the k shots, so its rows say it uses more labels than k.
* ``shots``: only the k shots a few-shot user has, 2-fold over them (by patient where the
  shots come from two or more patients): train on one half, score the other, and the other
  way round. At k = 1 nothing can be held out, so the learner keeps its code defaults; at
  k = 0 there are no target labels, so the rule falls back to ``source-val``.
* ``source-val``: the labeled source-domain validation split (no target labels at all: the
  only label-honest rule at k = 0). At k >= 1 it selects for the source task: its score
  rewards the smallest step away from the source model (``results/selection``), so a study
  warns (:func:`caveat`).
* ``oracle``: the test set itself. An upper bound on what selection can buy, marked ORACLE
  in every output and never a default.
"""

from __future__ import annotations

RULES = ("val", "shots", "source-val", "oracle")
DEFAULT_RULE = "val"
#: The token of a learner that ran with its code defaults (nothing searched, or nothing to score on).
DEFAULTS = "defaults"

_LABELS = {
    "val": "val (target validation split: more labels than k)",
    "shots": "shots (2-fold over the k shots)",
    "source-val": "source-val (source validation split)",
    "oracle": "ORACLE (test set)",
    DEFAULTS: "defaults",
}


def check_rule(rule: str) -> str:
    """``rule`` when it is one of :data:`RULES`, else a ValueError naming the choices."""
    if rule not in RULES:
        raise ValueError(f"--selection must be one of {', '.join(RULES)}, got {rule!r}")
    return rule


def applied_rule(rule: str, k: int) -> str:
    """The rule a (rule, k) study really uses: ``shots`` has nothing to hold out at k = 1
    (code defaults) and no target labels at k = 0 (source validation split)."""
    check_rule(rule)
    if rule == "shots" and k == 1:
        return DEFAULTS
    if rule == "shots" and k == 0:
        return "source-val"
    return rule


def caveat(rule: str, k: int) -> str:
    """A warning for a (rule, k) pair that selects for the wrong task, or ""."""
    if rule == "source-val" and k >= 1:
        return (
            f"--selection source-val at k = {k} scores the source (CAP) validation split, not the target: "
            "for a source-initialised learner it rewards the smallest step away from the source model (the lr "
            "at the floor of its range, results/selection); use it at k = 0 only, and val or shots at k >= 1"
        )
    return ""


def rule_label(token: str, rule: str = "") -> str:
    """The words a leaderboard row shows for a cell's selection token (``rule`` = the run's rule,
    named when the token is a fallback of it, e.g. ``defaults (shots rule, k = 1)``)."""
    text = _LABELS.get(token, token)
    if rule and rule != token:
        text += f" ({rule} rule fallback)"
    return text


def is_oracle(token: str) -> bool:
    return token == "oracle"


def study_name(learner: str, k_label: str, rule: str = DEFAULT_RULE) -> str:
    """``finetune-k5`` (rule ``val``, the name ``ftbench tune`` always used), ``finetune-k5-shots`` ..."""
    name = f"{learner}-k{str(k_label).replace('%', 'pct')}"
    return name if rule == DEFAULT_RULE else f"{name}-{rule}"
