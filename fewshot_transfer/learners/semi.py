"""The semi-supervised learners' base: shared flags, the k = 0 labeled stream and ``fit``.

A semi-supervised learner is its supervised counterpart (scratch, or finetune for the
``-cap`` variants) plus :class:`~fewshot_transfer.training.StepHooks` that use the
unlabeled target slices; subclasses only build those hooks. With ``unlabeled_weight = 0``
no hook is installed, so the learner *is* its counterpart, bit for bit. Their common
hyperparameters (:data:`SEMI_HPARAMS` and the shared entries below) are declared here once,
and :func:`cap_variant` derives any learner's ``-cap`` form.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn

from fewshot_transfer.learners.base import Control, Learner
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.learners.hparams import HP, LR, LogUniform
from fewshot_transfer.learners.scratch import Scratch
from fewshot_transfer.training import LearnerContext, Segmenter, StepHooks, labeled_batches, train_steps


def labeled_stream(ctx: LearnerContext, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The shots (finetune's stream); at k = 0 ``batch_size`` labeled source rows instead.

    Learners that run at k = 0 must declare ``uses_source``; the others get a clear error.
    """
    if len(ctx.support):
        return labeled_batches(ctx, ctx.support, batch_size)
    return labeled_batches(ctx, ctx.support, batch_size, source=ctx.source_train, n_source=batch_size)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A teacher: a copy of ``model`` in eval mode whose parameters take no gradient."""
    teacher = copy.deepcopy(model).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student``, parameter by parameter, in place."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)


def sigmoid_rampup(step: int, ramp_steps: int) -> float:
    """The usual consistency ramp ``exp(-5 (1 - t)^2)``, ``t = min(1, step / ramp_steps)`` (Laine & Aila 2017)."""
    t = min(1.0, step / max(1, ramp_steps))
    return math.exp(-5.0 * (1.0 - t) ** 2)


def weak_view(ctx: LearnerContext, rows: Iterator[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
    """The next unlabeled rows under the run's own augmentation (flip, affine, jitter), drawn from ``gen``.

    A hook that needs pixel-aligned views (teacher and student, weak and strong) draws them
    itself from this one tensor instead of appending rows through ``extra_rows``, whose
    geometry it would never see.
    """
    raw = next(rows)
    weak, _ = ctx.augment(raw, torch.zeros_like(raw), gen)
    return weak


#: What every semi-supervised learner has: scratch's lr (so that weight 0 is scratch) and the
#: unlabeled term's weight, searched log-uniformly from 0.1 (a learner may widen the top).
SEMI_HPARAMS: dict[str, HP] = {
    "lr": LR.but(default=Scratch.defaults["lr"]),
    "unlabeled_weight": HP(
        1.0, "weight of the unlabeled term (0: the supervised counterpart)", low=0.0, search=LogUniform(0.1, 3.0)
    ),
}
UNLABELED_BATCH = HP(4, "unlabeled target rows per step")
EMA_DECAY = HP(0.99, "decay of the EMA teacher", low=0.0, high=1.0)
RAMP_SHARE = HP(0.3, "share of the steps over which the unlabeled weight ramps up")
CONFIDENCE = HP(0.9, "pseudo-labels are kept where max(p, 1 - p) reaches it", low=0.5, high=1.0)


def weight_search(high: float) -> HP:
    """``unlabeled_weight`` searched up to ``high`` instead of 3."""
    return SEMI_HPARAMS["unlabeled_weight"].but(search=LogUniform(0.1, high))


class SemiSupervisedLearner(Learner):
    """Base of the ``semi`` family: subclasses implement :meth:`hooks`."""

    family = "semi"
    uses_source = False
    uses_unlabeled = True
    #: Start from the CAP-pretrained backbone (the ``-cap`` variants) instead of a fresh one.
    from_source: ClassVar[bool] = False
    #: With unlabeled weight 0 the learner is its supervised counterpart (``-cap``: finetune).
    control: ClassVar[Control | None] = Control(off={"unlabeled_weight": 0.0}, same_as="scratch")

    def hooks(self, ctx: LearnerContext, model: nn.Module) -> StepHooks:
        """The hooks that add the unlabeled term to the shared loop."""
        raise NotImplementedError

    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        if not len(ctx.support) and not self.supports_k0:
            raise ValueError(f"{self.name} needs target shots (k >= 1); {self.name}-cap runs at k = 0")
        model = ctx.source_model() if self.from_source else ctx.new_model()
        batches = labeled_stream(ctx, p.batch_size)
        hooks = self.hooks(ctx, model) if p.unlabeled_weight else None
        train_steps(ctx, model, batches, steps=p.steps, lr=p.lr, phase="target", hooks=hooks)
        return ctx.segmenter(model)


def cap_variant(cls: type[SemiSupervisedLearner], doc: str) -> type[SemiSupervisedLearner]:
    """``NAME-cap``: ``cls`` from the CAP-pretrained backbone at finetune's lr, so that weight 0
    is finetune (its control); with CAP rows as its labeled stream it also runs at k = 0.
    Not registered here: the defining module registers it under a module-level name."""
    return type(
        f"{cls.__name__}Cap",
        (cls,),
        {
            "__doc__": doc,
            "__module__": cls.__module__,
            "__qualname__": f"{cls.__qualname__}Cap",
            "name": f"{cls.name}-cap",
            "uses_source": True,
            "supports_k0": True,
            "from_source": True,
            "control": Control(off={"unlabeled_weight": 0.0}, same_as="finetune"),
            "hparams": {**cls.hparams, "lr": cls.hparams["lr"].but(default=Finetune.defaults["lr"])},
        },
    )
