"""``fixmatch``: weak-to-strong consistency with one strong view (Sohn et al. 2020).

UniMatch's special case (``learners/unimatch.py``, shared :class:`WeakToStrongHooks`): the
model's confident hard labels on a weak view (``max(p, 1 - p) >= confidence``, 0.95) train
it on *one* strong view of the same rows (CT intensity jitter, blur, CutMix), weighted by
``unlabeled_weight``; no feature-perturbation branch. With ``unlabeled_weight = 0`` it is
scratch, bit for bit.
"""

from __future__ import annotations

from typing import ClassVar

from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import without
from fewshot_transfer.learners.unimatch import UniMatch


@register
class FixMatch(UniMatch):
    name = "fixmatch"
    n_strong: ClassVar[int] = 1
    hparams = without(UniMatch.hparams, "feature_dropout")
