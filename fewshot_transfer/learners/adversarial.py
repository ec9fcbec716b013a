"""The adversarial learners' base class and the loop they share (alternating segmentor / discriminator updates).

One step:

1. draw ``round(source_share * batch_size)`` labeled source slices, the rest of
   ``batch_size`` as target shots (with replacement, k may be 1), and
   ``round(unlabeled_share * batch_size)`` unlabeled target slices; augment
   them together and run **one** concatenated forward with ``return_features=True``;
2. segmentor step with the discriminators frozen:
   ``L = seg(source) + seg(target shots) + sum_i w_i * term_i`` (terms from the learner);
3. discriminator step on the *detached* outputs/features of the same forward (no second
   segmentor forward), Adam with ``d_lr`` and betas (0.9, 0.99) (AdaptSegNet);
4. ``ctx.report`` of every term (``seg``, ``adv``, ``disc``, ...), which also raises
   ``TrainingDiverged`` on NaN/Inf.

The labeled part of the batch is as large as finetune's (``batch_size`` rows), plus a
modest unlabeled batch, so a step costs about ``1 + unlabeled_share`` finetune
steps (1.25x by default: 2 unlabeled rows next to 8 labeled ones) plus the small
discriminators.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from fewshot_transfer.adaptation.discriminators import set_requires_grad
from fewshot_transfer.learners.base import Learner
from fewshot_transfer.losses import seg_loss
from fewshot_transfer.training import LearnerContext, Segmenter, slice_batches, unlabeled_batches


@dataclass
class AdversarialBatch:
    """One forward over ``[source | target shots | unlabeled target]`` rows."""

    n_src: int
    n_tgt: int
    n_unl: int
    y_src: torch.Tensor
    y_tgt: torch.Tensor
    logits: torch.Tensor
    feats: dict[str, torch.Tensor]

    def parts(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split a batch-major tensor into its (source, shots, unlabeled) rows."""
        a, b = self.n_src, self.n_src + self.n_tgt
        return t[:a], t[a:b], t[b:]

    def target(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of the target domain (shots + unlabeled)."""
        return t[self.n_src :]


class AdversarialLearner(Learner):
    """Base of the adversarial learners: subclasses build the adversary and define its terms.

    Subclasses implement :meth:`build_adversary`, :meth:`segmentor_terms` and
    :meth:`discriminator_loss`; everything else (batches, optimizers, freezing, reporting)
    lives here once.
    """

    family = "adversarial"
    uses_source = True
    uses_target = True
    uses_unlabeled = True
    phase = "adapt"
    #: Shared defaults; subclasses extend them.
    base_defaults: dict[str, Any] = {
        "lr": 0.0005,
        "d_lr": 0.0001,
        "source_share": 0.5,
        "unlabeled_share": 0.25,
        "lambda_adv": 0.01,
    }

    # -- hooks --------------------------------------------------------------------------
    @staticmethod
    def search_space(trial: Any) -> dict[str, Any]:
        """What every adversarial learner tunes; subclasses add their own knobs to it."""
        return {
            "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
            "steps": trial.suggest_int("steps", 50, 300, step=25),
            "lambda_adv": trial.suggest_float("lambda_adv", 1e-4, 1e-1, log=True),
            "d_lr": trial.suggest_float("d_lr", 1e-5, 1e-3, log=True),
        }

    def build_adversary(self, ctx: LearnerContext, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def prepare(self, ctx: LearnerContext) -> None:
        """Per-cell setup before training (e.g. priors from the shots)."""

    def segmentor_terms(
        self, ctx: LearnerContext, step: int, batch: AdversarialBatch, adversary: nn.Module
    ) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
        """``[(name, weight, term)]`` added to the segmentation loss, plus extra stats to report."""
        raise NotImplementedError

    def discriminator_loss(
        self, ctx: LearnerContext, step: int, batch: AdversarialBatch, adversary: nn.Module
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminators' loss on the (detached) batch, plus stats; must report ``disc``."""
        raise NotImplementedError

    # -- loop ---------------------------------------------------------------------------
    def fit(self, ctx: LearnerContext) -> Segmenter:
        p = ctx.params
        n_lab = p.batch_size
        if n_lab < 2:
            raise ValueError(f"{self.name}: batch_size must be >= 2 (source and target rows), got {n_lab}")
        n_src = min(max(1, round(p.source_share * n_lab)), n_lab - 1)
        n_tgt = n_lab - n_src
        n_unl = max(0, round(p.unlabeled_share * n_lab)) if len(ctx.unlabeled) else 0
        model = ctx.source_model()
        adversary = self.build_adversary(ctx, model).to(ctx.device)
        self.prepare(ctx)
        opt = torch.optim.Adam(model.parameters(), lr=p.lr, weight_decay=float(ctx.train_cfg.get("weight_decay", 0.0)))
        opt_d = torch.optim.Adam(adversary.parameters(), lr=p.d_lr, betas=(0.9, 0.99))
        src_it = slice_batches(ctx, ctx.source_train, n_src, salt=301)
        tgt_it = slice_batches(ctx, ctx.support, n_tgt, salt=302)
        unl_it = unlabeled_batches(ctx, ctx.unlabeled, n_unl, salt=303) if n_unl else None
        gen = ctx.torch_generator(salt=zlib.crc32(f"{self.name}/{self.phase}".encode()) % 10_000)
        model.train()
        adversary.train()
        t0 = time.perf_counter()
        for step in range(1, p.steps + 1):
            xs, ys = next(src_it)
            xt, yt = next(tgt_it)
            xs_ = [xs, xt]
            ys_ = [ys, yt]
            if unl_it is not None:
                xu = next(unl_it)
                xs_.append(xu)
                ys_.append(torch.zeros_like(xu))
            x, y = ctx.augment(torch.cat(xs_), torch.cat(ys_), gen)
            logits, feats = model(x, return_features=True)
            batch = AdversarialBatch(n_src, n_tgt, n_unl, y[:n_src], y[n_src : n_src + n_tgt], logits, feats)
            lg_s, lg_t, _ = batch.parts(logits)
            seg_s = seg_loss(lg_s, batch.y_src)
            seg_t = seg_loss(lg_t, batch.y_tgt)

            set_requires_grad(adversary, False)
            terms, stats = self.segmentor_terms(ctx, step, batch, adversary)
            loss = seg_s + seg_t
            for _, weight, term in terms:
                loss = loss + weight * term
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            set_requires_grad(adversary, True)

            detached = AdversarialBatch(
                n_src, n_tgt, n_unl, batch.y_src, batch.y_tgt, logits.detach(), {k: v.detach() for k, v in feats.items()}
            )
            d_loss, d_stats = self.discriminator_loss(ctx, step, detached, adversary)
            if d_loss.requires_grad:
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()

            values = {"loss": float(loss.detach()), "seg": float((seg_s + seg_t).detach()),
                      "seg_src": float(seg_s.detach()), "seg_tgt": float(seg_t.detach())}
            values.update({name: float(term.detach()) for name, _, term in terms})
            values["disc"] = float(d_loss.detach())
            values.update(stats)
            values.update(d_stats)
            ctx.report(self.phase, step, values)
        ctx.train_seconds += time.perf_counter() - t0
        return ctx.segmenter(model.eval())
