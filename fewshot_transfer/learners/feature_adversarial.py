"""``dual-adv`` and ``single-adv``: feature-level adversarial DA on a configurable U-Net layer.

**dual-adv** (the seed's feature-level method): two discriminators on the features of
``layer`` (default ``dec1``, the full-resolution decoder; any of the backbone's
``enc{i}`` / ``bottleneck`` / ``dec{i}``). ``D_pos`` is trained and read only at lesion
positions, ``D_neg`` only at background positions, so "what a lesion looks like to the
segmentor" and "what background looks like" are aligned across CAP and COVID-19
separately, and the 1-10 % lesion region is not drowned by background. Each D is a
3-layer conv net with ``d_kernel x d_kernel`` kernels (3 = spatial context: a 7x7 field).

Where each position goes (masks are made at full resolution, then brought to the layer's
size: a cell is lesion if any of its pixels is, background only if all of them are):

* source rows and target shots: from their labels;
* unlabeled target rows (after ``warmup`` segmentor steps; always during the D warm-up):
  confident predictions of the same forward, ``sigmoid > conf_threshold`` -> lesion;
  ``sigmoid < 1 - conf_threshold`` **and** farther than ``ignore_radius`` pixels from
  any non-confident pixel -> background; the rest (the ignore band) -> nowhere. The band
  keeps the rim of a half-seen ground-glass lesion out of ``D_neg``, which would push the
  missed lesion's features toward CAP background.

Losses (source label 0, target label 1, ``T`` = target positions, ``r`` over the regions
present in the batch, each a masked mean over region ``r``):

    segmentor:      L = seg(labeled rows) + lambda * mean_r mean_{j in T_r} BCE(D_r(f)_j, 0)
    discriminators: L_D = mean_r [ 1/2 mean_{i in S_r} BCE(D_r(f)_i, 0) + 1/2 mean_{j in T_r} BCE(D_r(f)_j, 1) ]

Updates alternate (segmentor with D frozen, then D on the detached features of the same
forward) with the non-saturating "fool D" loss; see ``docs/adversarial.md``.

**single-adv** is the ablation: one discriminator over *all* positions (every source and
every target position, shots and unlabeled, from step 1), its loss a plain mean in which
background dominates.
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot_transfer.adaptation.discriminators import PixelDiscriminator
from fewshot_transfer.adaptation.losses import RegionAdversarialLoss, confident_regions, region_at
from fewshot_transfer.learners.adversarial import AdversarialBatch, AdversarialLearner
from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import HP, Categorical, IntRange, Uniform, without
from fewshot_transfer.training import LearnerContext

#: Layers offered to the tuner (all of the backbone's named features are accepted).
TUNED_LAYERS = ["dec1", "dec2", "bottleneck"]


@register
class DualAdversarial(AdversarialLearner):
    name = "dual-adv"
    #: Region names, one discriminator each.
    regions: tuple[str, ...] = ("pos", "neg")
    hparams = {
        **AdversarialLearner.hparams,
        "layer": HP("dec1", "the U-Net layer whose features are aligned", search=Categorical(tuple(TUNED_LAYERS))),
        "d_kernel": HP(3, "kernel size of the pixel discriminators' convolutions"),
        "d_hidden": HP(0, "discriminator width (0: twice the layer's channels)"),
        "conf_threshold": HP(
            0.9,
            "confidence above which an unlabeled position is routed as lesion or background",
            search=Uniform(0.7, 0.99),
        ),
        "ignore_radius": HP(
            2, "pixels of ignore band kept between confident background and unsure pixels", search=IntRange(0, 4)
        ),
        "warmup": HP(0, "segmentor steps before unlabeled rows are routed by predictions"),
    }

    def build_adversary(self, ctx: LearnerContext, model: nn.Module) -> RegionAdversarialLoss:
        p = ctx.params
        if p.layer not in model.feature_channels:
            raise ValueError(f"{self.name}: layer must be one of {sorted(model.feature_channels)}, got {p.layer!r}")
        hidden = p.d_hidden or None
        discs = {
            r: PixelDiscriminator.for_backbone(model, p.layer, hidden=hidden, kernel=p.d_kernel) for r in self.regions
        }
        return RegionAdversarialLoss(discs)

    def pseudo_labels(self, ctx: LearnerContext, step: int) -> bool:
        return step == 0 or step > ctx.params.warmup

    def aligned(self, ctx, model):
        layer = ctx.params.layer
        return layer, lambda x: model(x, return_features=True)[1][layer]

    def route(
        self, ctx: LearnerContext, batch: AdversarialBatch
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
        """Region masks at the layer's size for the source rows and the target rows (shots + unlabeled)."""
        p = ctx.params
        _, _, lg_u = batch.parts(batch.logits)
        y_s, y_t = batch.y_src > 0.5, batch.y_tgt > 0.5
        if batch.n_unl and batch.pseudo:
            pos_u, neg_u = confident_regions(torch.sigmoid(lg_u), p.conf_threshold, p.ignore_radius)
        else:  # during the pseudo-label warm-up, unlabeled rows are routed nowhere
            pos_u = neg_u = torch.zeros_like(lg_u, dtype=torch.bool)
        size = batch.feats[p.layer].shape[-2:]
        src = {"pos": region_at(y_s, size, whole=False), "neg": region_at(~y_s, size, whole=True)}
        tgt = {
            "pos": region_at(torch.cat([y_t, pos_u]), size, whole=False),
            "neg": region_at(torch.cat([~y_t, neg_u]), size, whole=True),
        }
        stats = (
            {"routed_pos_u": float(pos_u.float().mean()), "routed_neg_u": float(neg_u.float().mean())}
            if batch.n_unl
            else {}
        )
        return src, tgt, stats

    def segmentor_terms(self, ctx, batch, adversary, lam):
        if adversary is None:  # the control arm: nothing but the adversary to switch off
            return [], {}
        _, tgt, stats = self.route(ctx, batch)
        adv, adv_stats = adversary.adversarial_loss(batch.target(batch.feats[ctx.params.layer]), tgt)
        return [("adv", lam, adv)], {**stats, **adv_stats}

    def discriminator_loss(self, ctx, batch, adversary):
        src, tgt, _ = self.route(ctx, batch)
        f = batch.feats[ctx.params.layer]
        return adversary.discriminator_loss(f[: batch.n_src], src, batch.target(f), tgt)


@register
class SingleAdversarial(DualAdversarial):
    name = "single-adv"
    regions = ("all",)
    #: One discriminator everywhere: nothing is routed, so no routing knobs.
    hparams = without(DualAdversarial.hparams, "conf_threshold", "ignore_radius", "warmup")

    def pseudo_labels(self, ctx, step):
        return True

    def route(self, ctx, batch):
        f = batch.feats[ctx.params.layer]
        everywhere = torch.ones((f.shape[0], 1, *f.shape[-2:]), dtype=torch.bool, device=f.device)
        return {"all": everywhere[: batch.n_src]}, {"all": everywhere[batch.n_src :]}, {}
