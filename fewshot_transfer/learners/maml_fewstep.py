"""``maml-fewstep``: MAML as Finn et al. train *and* test it — plain SGD in both loops.

Inner loop: ``inner_steps`` SGD steps at ``inner_lr`` (second order); at test time the
meta-trained init takes ``test_steps`` SGD steps at the same ``inner_lr`` on minibatches
of the shots (finetune's stream) — far fewer target steps than the common budget, which
is why this is its own row and not ``maml``.
"""

from __future__ import annotations

from fewshot_transfer.learners.base import Control, Learner, register
from fewshot_transfer.meta.training import META_DEFAULTS, MetaConfig, fit_meta, meta_search_space
from fewshot_transfer.training import LearnerContext, Segmenter


@register
class MAMLFewStep(Learner):
    name = "maml-fewstep"
    family = "meta"
    uses_source = True
    defaults = {**META_DEFAULTS, "meta_steps": 30, "inner_lr": 0.01, "test_steps": 10}
    control = Control(off={"meta_steps": 0})

    @staticmethod
    def search_space(trial) -> dict:
        space = meta_search_space(trial, second_order=True)
        del space["lr"]
        return {
            **space,
            "inner_lr": trial.suggest_float("inner_lr", 0.002, 0.1, log=True),
            "test_steps": trial.suggest_int("test_steps", 5, 50, step=5),
        }

    def fit(self, ctx: LearnerContext) -> Segmenter:
        cfg = MetaConfig.from_params(ctx.params, algorithm="maml", first_order=False, adaptation="fewstep")
        return fit_meta(ctx, self.name, cfg)
