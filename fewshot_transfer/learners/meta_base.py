"""The meta family's base: each meta-learner is a configuration of one gradient-based wrapper.

MAML, first-order MAML, Meta-SGD, ANIL, Reptile and MAML with few-step SGD differ only in
the :class:`~fewshot_transfer.meta.training.MetaConfig` choices they fix (algorithm, order,
learned rates, adapted scope, test-time adaptation) and in their table's budget; training,
caching and test-time adaptation are ``meta/training.py``'s (learn2learn's ``GBML`` makes
the same point). A meta-learner is therefore a name, a docstring and a few class attributes.
"""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar

from fewshot_transfer.learners.base import Control, Learner
from fewshot_transfer.learners.finetune import Finetune
from fewshot_transfer.learners.hparams import HP, LR, IntRange, LogUniform
from fewshot_transfer.meta.training import MetaConfig, fit_meta
from fewshot_transfer.training import LearnerContext, Segmenter

_DEFAULT = {f.name: f.default for f in fields(MetaConfig)}


def meta_hparams(*, second_order: bool, meta_steps: int) -> dict:
    """The table every meta-learner shares. Second-order learners search a smaller inner and
    outer budget (each meta-step costs more); the test-time ``lr`` is finetune's, searched like it."""
    return {
        "lr": LR.but(
            default=Finetune.defaults["lr"], help="Adam step size of the inner loop and of the test-time loop"
        ),
        "inner_steps": HP(
            _DEFAULT["inner_steps"], "inner-loop steps per task", search=IntRange(1, 5 if second_order else 10)
        ),
        "meta_lr": HP(_DEFAULT["meta_lr"], "outer (meta) optimizer step size", search=LogUniform(1e-4, 3e-3)),
        "meta_steps": HP(
            meta_steps,
            "outer (meta-training) steps; 0 leaves the source model as it is",
            search=IntRange(10, 60 if second_order else 120, step=10),
        ),
        "inner_lr": HP(_DEFAULT["inner_lr"], "few-step adaptation only: SGD step size of the inner and test loops"),
        "test_steps": HP(_DEFAULT["test_steps"], "few-step adaptation only: test-time SGD steps"),
        "meta_opt": HP(_DEFAULT["meta_opt"], "outer optimizer: adam, or sgd (Reptile's interpolation)"),
        "meta_batch": HP(_DEFAULT["meta_batch"], "tasks per meta-step"),
        "n_support": HP(_DEFAULT["n_support"], "slices a task adapts on"),
        "n_query": HP(_DEFAULT["n_query"], "slices a task's adapted weights are scored on"),
        "n_val_tasks": HP(_DEFAULT["n_val_tasks"], "fixed source-validation tasks scored before and after"),
        "init": HP(_DEFAULT["init"], "what meta-training starts from: source (the cached CAP model) or scratch"),
        "mix_target": HP(_DEFAULT["mix_target"], "probability that a task is built from the target shots (k >= 2)"),
    }


class MetaLearner(Learner):
    """Base of the ``meta`` family: subclasses fix the MetaConfig choices below and a table.

    With ``meta_steps = 0`` a learner that adapts every parameter is finetune, bit for bit,
    which is its control; a scoped one (ANIL) is its own control row."""

    family = "meta"
    uses_source = True
    control: ClassVar[Control | None] = Control(off={"meta_steps": 0}, same_as="finetune")
    algorithm: ClassVar[str] = "maml"
    first_order: ClassVar[bool] = False
    learn_lr: ClassVar[bool] = False
    adaptation: ClassVar[str] = "common"

    def adapt(self, ctx: LearnerContext) -> tuple[str, ...] | None:
        """Parameter-name prefixes the loops adapt (None: all of them)."""
        return None

    def config(self, ctx: LearnerContext) -> MetaConfig:
        return MetaConfig.from_params(
            ctx.params,
            algorithm=self.algorithm,
            first_order=self.first_order,
            learn_lr=self.learn_lr,
            adapt=self.adapt(ctx),
            adaptation=self.adaptation,
        )

    def fit(self, ctx: LearnerContext) -> Segmenter:
        return fit_meta(ctx, self.name, self.config(ctx))
