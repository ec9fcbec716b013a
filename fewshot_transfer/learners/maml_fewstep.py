"""``maml-fewstep``: MAML as Finn et al. train *and* test it — plain SGD in both loops.

Inner loop: ``inner_steps`` SGD steps at ``inner_lr`` (second order); at test time the
meta-trained init takes ``test_steps`` SGD steps at the same ``inner_lr`` on minibatches
of the shots (finetune's stream) — far fewer target steps than the common budget, which
is why this is its own row and not ``maml``.
"""

from __future__ import annotations

from typing import Any

from fewshot_transfer.learners.base import Control, register
from fewshot_transfer.learners.hparams import LR, IntRange, LogUniform
from fewshot_transfer.learners.meta_base import MetaLearner, meta_hparams

_META = meta_hparams(second_order=True, meta_steps=30)


@register
class MAMLFewStep(MetaLearner):
    name = "maml-fewstep"
    adaptation = "fewstep"
    control = Control(off={"meta_steps": 0})
    hparams = {
        **_META,
        "lr": LR.but(help="not used by few-step adaptation (inner_lr is); drawn by ftbench tune, not applied"),
        "inner_lr": _META["inner_lr"].but(search=LogUniform(0.002, 0.1)),
        "test_steps": _META["test_steps"].but(search=IntRange(5, 50, step=5)),
    }

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """The table's space less ``lr``: drawn as the family's first name (as it always was),
        but few-step adaptation runs on ``inner_lr``, so the draw is not applied."""
        space = super().search_space(trial)
        del space["lr"]
        return space
