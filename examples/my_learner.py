"""An example learner plugin: fine-tuning plus entropy minimization on unlabeled target slices.

Run it without installing anything into the package:

    ftbench run --plugin examples/my_learner.py --learners finetune,entropy-min --shots 1,5
    ftbench tune entropy-min --plugin examples/my_learner.py --shots 5 --trials 10

With ``entropy_weight = 0`` it adds no rows and no term, so the shared loop runs exactly
finetune's steps: the control "my method with its extra term off is its baseline" holds by
construction, and the leaderboard's gain over finetune is the term's effect. ``control``
declares it (``ftbench run --controls`` shows the mechanism gain against finetune's row), and
``check_learner`` checks it bit for bit (and that the term does move the weights):

    from fewshot_transfer.learners import load_plugins
    from fewshot_transfer.testing import check_learner
    load_plugins(["examples/my_learner.py"])
    check_learner("entropy-min")  # a minute on one core; raises naming the check that fails
"""

from __future__ import annotations

import torch

from fewshot_transfer import (
    HP,
    LR,
    Control,
    Learner,
    LearnerContext,
    LogUniform,
    Segmenter,
    StepBatch,
    StepHooks,
    register,
    section,
    slice_batches,
    train_steps,
    unlabeled_batches,
)


class EntropyHooks(StepHooks):
    """Appends unlabeled rows to each step and adds their mean binary entropy to the loss."""

    def __init__(self, ctx: LearnerContext, weight: float, batch_size: int) -> None:
        self.weight = weight
        self.rows = unlabeled_batches(ctx, ctx.unlabeled, batch_size, salt=5) if weight else None

    def extra_rows(self, step: int) -> torch.Tensor | None:
        return next(self.rows) if self.rows is not None else None

    def terms(self, batch: StepBatch) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
        if not self.weight:
            return [], {}
        p = torch.sigmoid(batch.extra_logits).clamp(1e-6, 1 - 1e-6)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
        return [("entropy", self.weight, entropy)], {}


@register
class EntropyMin(Learner):
    name = "entropy-min"
    family = "semi"
    uses_source = True  # starts from the CAP-pretrained backbone
    uses_unlabeled = True  # without this flag ctx.unlabeled raises: the context withholds it
    #: one table: default, bounds, search distribution and help per hyperparameter (lr = finetune's:
    #: weight 0 is finetune); defaults, validation, `ftbench tune` and `ftbench learners` read it
    hparams = {
        "lr": LR.but(default=0.006, search=LogUniform(3e-4, 3e-3)),
        "entropy_weight": HP(0.1, "weight of the entropy term", low=0.0, high=10.0, search=LogUniform(0.01, 1.0)),
        "unlabeled_batch": HP(4, "unlabeled target rows per step"),
    }
    #: the mechanism off (no unlabeled rows, no term) is finetune, bit for bit
    control = Control(off={"entropy_weight": 0.0}, same_as="finetune")

    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params  # typed: p.lr is a float, p.unlabeled_batch an int, checked before any work
        model = ctx.source_model()
        batches = slice_batches(ctx, ctx.support, p.batch_size)  # finetune's stream, same seed
        hooks = EntropyHooks(ctx, p.entropy_weight, p.unlabeled_batch)
        train_steps(ctx, model, batches, steps=p.steps, lr=p.lr, phase="target", hooks=hooks)
        return ctx.segmenter(model)


@section
def entropy_min_note(rows: list[dict], records: list[dict]) -> str | None:
    """A leaderboard.md section that appears only in runs that include this learner."""
    if not any(r.get("learner") == EntropyMin.name for r in rows):
        return None
    return "## entropy-min\n\nFine-tuning plus entropy minimization on the unlabeled target pool.\n"
