"""``dual-adv`` and ``single-adv``: feature-level adversarial DA on the U-Net's ``dec1`` features.

**dual-adv** (the seed's feature-level method): two pixel discriminators on the
full-resolution decoder features ``f = feats["dec1"]``. ``D_pos`` sees feature vectors only
at lesion pixels, ``D_neg`` only at background pixels, so "what a lesion looks like to the
segmentor" and "what background looks like" are aligned across CAP and COVID-19
separately, and the 1-10 % lesion region is not drowned by background.

Where each pixel goes:

* source rows: lesion / background from the source labels;
* target shots: from their labels;
* unlabeled target rows: only after ``warmup`` steps, from confident predictions of the
  same forward (``sigmoid > conf_threshold`` -> lesion, ``< 1 - conf_threshold`` ->
  background, in between -> ignored). Before the warm-up the unlabeled rows contribute
  **nothing** (neither to the discriminators nor to the adversarial term): the
  source-pretrained model's early target predictions are what DA is meant to fix, and
  pseudo-regions from them would route mislabeled features to the wrong discriminator.

Losses (source label 0, target label 1, ``T`` = target shots + routed unlabeled pixels,
``r`` over the regions present in the batch, each term a masked mean over region ``r``):

    segmentor:      L = seg(source) + seg(shots) + lambda_adv * mean_r mean_{j in T_r} BCE(D_r(f_j), 0)
    discriminators: L_D = mean_r [ 1/2 mean_{i in S_r} BCE(D_r(f_i), 0) + 1/2 mean_{j in T_r} BCE(D_r(f_j), 1) ]

``seg`` is the shared soft-Dice + BCE. Updates alternate (segmentor step with D frozen,
then a D step on the detached features of the same forward) with the non-saturating
"fool D" loss rather than a gradient-reversal layer: one scheme for all four adversarial
learners, independent learning rates for segmentor and discriminators (D: Adam, ``d_lr``,
betas (0.9, 0.99)), and a segmentor gradient that does not vanish when D wins (the GRL
minimax gradient ``-log(1 - D)`` saturates exactly then). Starts from the cached
CAP-pretrained backbone (``ctx.source_model()``).

**single-adv** is the ablation: the same learner with one discriminator over *all* pixels
(region ``"all"``: every source and every target pixel, shots and unlabeled, from step 1 --
there is no pseudo-labelling to warm up), its loss a plain mean over all pixels.

Cost: each region's pixels are subsampled to at most ``max_pixels`` (2048) per domain and
step -- an unbiased estimate of its masked mean; with 64x64 slices this only thins the
background (and single-adv's "all"), never the lesion region in practice.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fewshot_transfer.adaptation.discriminators import PixelDiscriminator
from fewshot_transfer.adaptation.losses import RegionAdversarialLoss, confident_regions
from fewshot_transfer.learners.adversarial import AdversarialBatch, AdversarialLearner
from fewshot_transfer.learners.base import register
from fewshot_transfer.training import LearnerContext

FEATURE = "dec1"


@register
class DualAdversarial(AdversarialLearner):
    name = "dual-adv"
    #: Region names, one discriminator each.
    regions: tuple[str, ...] = ("pos", "neg")
    defaults = {
        **AdversarialLearner.base_defaults,
        "lambda_adv": 0.01,
        "conf_threshold": 0.9,
        "warmup": 50,
        "d_hidden": 0,  # 0 = 2 x feature channels
        "max_pixels": 2048,  # per region and domain per step (uniform subsample; 0 = all)
    }

    @staticmethod
    def search_space(trial: Any) -> dict[str, Any]:
        return {
            **AdversarialLearner.search_space(trial),
            "conf_threshold": trial.suggest_float("conf_threshold", 0.7, 0.99),
            "warmup": trial.suggest_int("warmup", 0, 150, step=10),
        }

    def build_adversary(self, ctx: LearnerContext, model: nn.Module) -> RegionAdversarialLoss:
        hidden = int(ctx.params.get("d_hidden", 0)) or None
        discs = {r: PixelDiscriminator.for_backbone(model, FEATURE, hidden=hidden) for r in self.regions}
        return RegionAdversarialLoss(discs, max_pixels=ctx.params.max_pixels)

    def route(
        self, ctx: LearnerContext, step: int, batch: AdversarialBatch
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
        """Region masks ``[B, 1, H, W]`` for the source rows and the target rows (shots + unlabeled)."""
        _, _, lg_u = batch.parts(batch.logits)
        y_s, y_t = batch.y_src > 0.5, batch.y_tgt > 0.5
        src = {"pos": y_s, "neg": ~y_s}
        if batch.n_unl and step > ctx.params.warmup:
            pos_u, neg_u = confident_regions(torch.sigmoid(lg_u), ctx.params.conf_threshold)
        else:  # before the warm-up, unlabeled rows are routed nowhere
            pos_u = neg_u = torch.zeros_like(lg_u, dtype=torch.bool)
        tgt = {"pos": torch.cat([y_t, pos_u]), "neg": torch.cat([~y_t, neg_u])}
        stats = {"routed_pos_u": float(pos_u.float().mean()), "routed_neg_u": float(neg_u.float().mean())} if batch.n_unl else {}
        return src, tgt, stats

    def segmentor_terms(self, ctx, step, batch, adversary):
        _, tgt, stats = self.route(ctx, step, batch)
        adv, adv_stats = adversary.adversarial_loss(batch.target(batch.feats[FEATURE]), tgt)
        return [("adv", ctx.params.lambda_adv, adv)], {**stats, **adv_stats}

    def discriminator_loss(self, ctx, step, batch, adversary):
        src, tgt, _ = self.route(ctx, step, batch)
        f = batch.feats[FEATURE]
        return adversary.discriminator_loss(f[: batch.n_src], src, batch.target(f), tgt)


@register
class SingleAdversarial(DualAdversarial):
    name = "single-adv"
    regions = ("all",)
    defaults = {k: v for k, v in DualAdversarial.defaults.items() if k not in ("conf_threshold", "warmup")}

    @staticmethod
    def search_space(trial: Any) -> dict[str, Any]:
        return AdversarialLearner.search_space(trial)

    def route(self, ctx, step, batch):
        f = batch.feats[FEATURE]
        everywhere = torch.ones((f.shape[0], 1, *f.shape[-2:]), dtype=torch.bool, device=f.device)
        return {"all": everywhere[: batch.n_src]}, {"all": everywhere[batch.n_src :]}, {}
