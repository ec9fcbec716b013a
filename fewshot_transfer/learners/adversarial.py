"""The adversarial learners' base class: the common target budget plus a discriminator game.

Every adversarial learner trains through THE loop, :func:`~fewshot_transfer.training.train_steps`,
with :class:`AdversarialHooks`. One step:

1. labeled rows from ``labeled_batches``: ``source_rows(batch_size, source_share)`` CAP rows,
   then ``batch_size`` shot rows (finetune's stream; none at k = 0);
2. ``round(unlabeled_share * batch_size)`` unlabeled target rows via ``extra_rows``;
3. one augmentation, one forward with features; ``L = seg(all labeled rows) + sum_i w_i term_i``
   with the discriminators frozen (``lambda_adv`` ramped linearly over the first
   ``lambda_ramp`` share of the steps);
4. ``after_step``: ``d_steps`` discriminator steps on the detached outputs of the same
   forward (Adam, ``d_lr``, betas (0.9, 0.99)), D's accuracy per region and per domain reported.

With ``lambda_adv = 0`` (and the learner's other extra weights 0) the segmentor sees
exactly finetune's (``source_share = 0``, ``unlabeled_share = 0``) or joint's batches,
augmentation and optimizer: the fair-protocol controls hold by construction.

Before the loop the discriminators are **warmed up** for ``d_warmup`` steps on the frozen
pretrained model's features (its own streams, so the segmentor's are untouched): the game
starts against a D that already tells the domains apart, instead of one at chance whose
gradient points nowhere. D's accuracies go to ``ctx.summary["adversarial"]``; with
``probe`` the harness reads held-out linear probes of domain separability at the aligned
layer (:meth:`aligned`), per class, before and after adaptation (``harness/runner.py``,
``record["probe"]``): the probe needs the target's lesion masks, which a learner never sees.

At k = 0 (no shots) the labeled rows are ``batch_size`` source rows and the target domain
is the unlabeled rows (unsupervised domain adaptation).

Default batch: 8 shots + 2 source rows (``source_share = 0.2``) + 2 unlabeled rows
(``unlabeled_share = 0.25``): 12 rows against finetune's 8, which keeps a cell within the
1.5x cost budget (``benchmarks/bench_adversarial.py``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fewshot_transfer.adaptation.discriminators import set_requires_grad
from fewshot_transfer.learners.base import Control, Learner
from fewshot_transfer.learners.hparams import HP, LR, SOURCE_SHARE, IntRange, LogUniform, Uniform
from fewshot_transfer.training import (
    LearnerContext,
    Segmenter,
    StepBatch,
    StepHooks,
    labeled_batches,
    source_rows,
    train_steps,
    unlabeled_batches,
)

Term = tuple[str, float, torch.Tensor]


@dataclass
class AdversarialBatch:
    """One forward over ``[source | target shots | unlabeled target]`` rows, as the adversary sees it."""

    n_src: int
    n_tgt: int
    n_unl: int
    y_src: torch.Tensor
    y_tgt: torch.Tensor
    logits: torch.Tensor
    feats: dict[str, torch.Tensor]
    #: Whether unlabeled rows may be routed by the model's own confident predictions.
    pseudo: bool = True

    def parts(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split a batch-major tensor into its (source, shots, unlabeled) rows."""
        a, b = self.n_src, self.n_src + self.n_tgt
        return t[:a], t[a:b], t[b:]

    def target(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of the target domain (shots + unlabeled)."""
        return t[self.n_src :]

    @property
    def y_labeled(self) -> torch.Tensor:
        return torch.cat([self.y_src, self.y_tgt])


class AdversarialHooks(StepHooks):
    """:class:`StepHooks` of the adversarial learners: unlabeled rows, the fool-D terms, the D step."""

    needs_features = True

    def __init__(
        self,
        learner: AdversarialLearner,
        ctx: LearnerContext,
        adversary: nn.Module,
        n_src: int,
        unlabeled: Iterator[torch.Tensor] | None,
    ) -> None:
        self.learner, self.ctx, self.adversary, self.n_src, self.unlabeled = learner, ctx, adversary, n_src, unlabeled
        p = ctx.params
        self.opt_d = torch.optim.Adam(adversary.parameters(), lr=p.d_lr, betas=(0.9, 0.99))
        self.history: list[dict[str, float]] = []
        #: With lambda_adv = 0 (the control arm) no discriminator is trained or read: it could
        #: not reach the segmentor, so the control is the same segmentor at a finetune-like cost.
        #: Its non-adversarial terms stay: ``segmentor_terms`` is called with ``adversary=None``.
        self.game = p.lambda_adv != 0  # a NaN lambda plays (and diverges loudly)

    def lam(self, step: int) -> float:
        p = self.ctx.params
        ramp = p.lambda_ramp * p.steps
        return p.lambda_adv * (min(1.0, step / ramp) if ramp > 0 else 1.0)

    def view(self, batch: StepBatch) -> AdversarialBatch:
        n_lab, n_src = batch.n_labeled, self.n_src
        return AdversarialBatch(
            n_src,
            n_lab - n_src,
            batch.logits.shape[0] - n_lab,
            batch.y[:n_src],
            batch.y[n_src:n_lab],
            batch.logits,
            batch.feats,
            pseudo=self.learner.pseudo_labels(self.ctx, batch.step),
        )

    def extra_rows(self, step: int) -> torch.Tensor | None:
        return next(self.unlabeled) if self.unlabeled is not None else None

    def terms(self, batch: StepBatch) -> tuple[list[Term], dict[str, float]]:
        if not self.game:  # the learner's own non-adversarial terms stay (adaptseg's aux output, the prior)
            terms, stats = self.learner.segmentor_terms(self.ctx, self.view(batch), None, 0.0)
            return terms, {**stats, "lambda": 0.0}
        set_requires_grad(self.adversary, False)  # back on in after_step, once the segmentor has stepped
        lam = self.lam(batch.step)
        terms, stats = self.learner.segmentor_terms(self.ctx, self.view(batch), self.adversary, lam)
        return terms, {**stats, "lambda": lam}

    def d_step(self, view: AdversarialBatch) -> dict[str, float]:
        """``d_steps`` discriminator updates on one detached batch; returns the last one's stats.

        A batch without source rows or without target rows (``source_share = 0`` at k >= 1
        with no unlabeled rows) has no domain game to play: D is left as it is."""
        set_requires_grad(self.adversary, True)
        stats: dict[str, float] = {}
        if view.n_src == 0 or view.n_tgt + view.n_unl == 0:
            return stats
        for _ in range(self.ctx.params.d_steps):
            loss, stats = self.learner.discriminator_loss(self.ctx, view, self.adversary)
            if loss.requires_grad:
                self.opt_d.zero_grad(set_to_none=True)
                loss.backward()
                self.opt_d.step()
            stats = {"disc": float(loss.detach()), **stats}
        return stats

    def after_step(self, batch: StepBatch) -> dict[str, float]:
        if not self.game:
            return {}
        stats = self.d_step(self.view(batch.detached()))
        self.history.append(stats)
        return stats


def _mean_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the mean of the finite values (keys whose values are all NaN are dropped)."""
    out: dict[str, float] = {}
    for key in sorted({k for r in rows for k in r}):
        vals = [r[key] for r in rows if key in r and math.isfinite(r[key])]
        if vals:
            out[key] = round(float(np.mean(vals)), 4)
    return out


class AdversarialLearner(Learner):
    """Base of the adversarial learners: subclasses build the adversary and define its terms.

    Subclasses implement :meth:`build_adversary`, :meth:`segmentor_terms`,
    :meth:`discriminator_loss` and :meth:`aligned` (what the probe reads); batches,
    optimizers, freezing, warm-up, probe and reporting live here once.
    """

    family = "adversarial"
    uses_source = True
    uses_target = True
    uses_unlabeled = True
    #: Runs at k = 0 (unsupervised DA: source labels + unlabeled target slices).
    supports_k0: ClassVar[bool] = True
    #: Shared by every adversarial learner; subclasses extend it (searched in this order).
    hparams: ClassVar[dict[str, HP]] = {
        "lr": LR.but(default=0.0005),
        "source_share": SOURCE_SHARE.but(help=f"{SOURCE_SHARE.help} (k = 0: all of them)"),
        "lambda_adv": HP(
            0.01, "weight of the segmentor's fool-D term (0: the control arm)", low=0.0, search=LogUniform(1e-4, 1e-1)
        ),
        "lambda_ramp": HP(
            0.25, "share of the steps over which lambda_adv ramps up linearly", search=Uniform(0.0, 0.5, step=0.25)
        ),
        "d_lr": HP(0.001, "Adam step size of the discriminators", search=LogUniform(1e-4, 1e-2)),
        "d_steps": HP(1, "discriminator steps after each segmentor step", low=1, search=IntRange(1, 3)),
        "d_warmup": HP(50, "discriminator steps on the frozen pretrained features before the loop", low=0),
        "unlabeled_share": HP(0.25, "unlabeled target rows per step, as a share of batch_size"),
        "probe": HP(True, "read linear probes of domain separability at the aligned layer, before and after"),
    }
    #: The same stream (source, shot and unlabeled rows, D game and probe included) with the
    #: segmentor's adversarial terms at weight 0.
    control: ClassVar[Control | None] = Control(off={"lambda_adv": 0.0})

    # -- hooks --------------------------------------------------------------------------
    def build_adversary(self, ctx: LearnerContext, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def prepare(self, ctx: LearnerContext) -> None:
        """Per-cell setup before training (e.g. priors from the shots)."""

    def pseudo_labels(self, ctx: LearnerContext, step: int) -> bool:
        """Whether unlabeled rows may be routed by predictions at ``step`` (0 = D warm-up)."""
        return True

    def segmentor_terms(
        self, ctx: LearnerContext, batch: AdversarialBatch, adversary: nn.Module | None, lam: float
    ) -> tuple[list[Term], dict[str, float]]:
        """``[(name, weight, term)]`` added to the segmentation loss (``lam`` = this step's lambda_adv), plus stats.

        ``adversary`` is None in the λ = 0 control arm: return only the learner's
        non-adversarial terms then (the control is the learner with its adversary off, not
        with its other losses off)."""
        raise NotImplementedError

    def discriminator_loss(
        self, ctx: LearnerContext, batch: AdversarialBatch, adversary: nn.Module
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminators' loss on the (detached) batch, plus stats with D's accuracies (``dacc_*``)."""
        raise NotImplementedError

    def aligned(self, ctx: LearnerContext, model: nn.Module) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
        """(name, images -> maps) of the layer the adversary aligns, for the linear probe."""
        raise NotImplementedError

    # -- pieces -------------------------------------------------------------------------
    def _warm_up(
        self, ctx: LearnerContext, model: nn.Module, hooks: AdversarialHooks, n_src: int, n_unl: int
    ) -> dict[str, float]:
        """``d_warmup`` D steps on the frozen pretrained model's features.

        The rows come from fresh copies of the training streams (new generators: the
        segmentor's own streams are not advanced) through their own augmentation
        generator; at most 8 forwards are run and cycled, so the warm-up costs a few
        segmentor forwards, not ``d_warmup`` steps."""
        p = ctx.params
        if not p.d_warmup:
            return {}
        labeled = labeled_batches(ctx, ctx.support, p.batch_size, source=ctx.source_train, n_source=n_src)
        unl = unlabeled_batches(ctx, ctx.unlabeled, n_unl, salt=403) if n_unl else None
        gen = ctx.torch_generator(salt=zlib.crc32(b"d_warmup") % 10_000)
        cached: list[StepBatch] = []
        with torch.no_grad():
            for _ in range(min(p.d_warmup, 8)):
                x, y = next(labeled)
                n = x.shape[0]
                if unl is not None:
                    xu = next(unl)
                    x, y = torch.cat([x, xu]), torch.cat([y, torch.zeros_like(xu)])
                x, y = ctx.augment(x, y, gen)
                logits, feats = model(x, return_features=True)
                cached.append(StepBatch(0, n, x, y[:n], logits, feats))
        rows = []
        for i in range(p.d_warmup):
            stats = hooks.d_step(hooks.view(cached[i % len(cached)]))
            ctx.report("d_warmup", i + 1, stats)
            rows.append(stats)
        return _mean_stats(rows[-max(1, len(rows) // 5) :])

    # -- fit ----------------------------------------------------------------------------
    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        k0 = len(ctx.support) == 0
        # k = 0: the labeled rows are batch_size source rows (there are no shots to spend them on)
        n_src = p.batch_size if k0 else source_rows(p.batch_size, p.source_share)
        n_unl = round(p.unlabeled_share * p.batch_size) if len(ctx.unlabeled) else 0
        if k0 and n_unl == 0:
            raise ValueError(
                f"{self.name} at k = 0 needs unlabeled target rows (unlabeled_share > 0, a non-empty pool)"
            )
        model = ctx.source_model()
        adversary = self.build_adversary(ctx, model).to(ctx.device)
        self.prepare(ctx)
        unl = unlabeled_batches(ctx, ctx.unlabeled, n_unl, salt=303) if n_unl else None
        hooks = AdversarialHooks(self, ctx, adversary, n_src, unl)
        layer, _ = self.aligned(ctx, model)
        warm = self._warm_up(ctx, model, hooks, n_src, n_unl) if hooks.game else {}
        batches = labeled_batches(ctx, ctx.support, p.batch_size, source=ctx.source_train, n_source=n_src)
        adversary.train()
        train_steps(ctx, model, batches, steps=p.steps, lr=p.lr, phase="target", hooks=hooks)
        tail = max(1, len(hooks.history) // 5)
        ctx.summary["adversarial"] = {
            "layer": layer,
            "rows": {"source": n_src, "target": 0 if k0 else p.batch_size, "unlabeled": n_unl},
            "d_after_warmup": warm,
            "d_first": _mean_stats(hooks.history[:tail]),
            "d_last": _mean_stats(hooks.history[-tail:]),
        }
        return ctx.segmenter(model.eval())
