"""``adaptseg-balanced``: output-space DA that survives class imbalance (the seed's contribution).

:class:`~fewshot_transfer.learners.adaptseg.AdaptSeg` with two changes (everything else --
discriminators, aux output, alternating updates, optimizers -- is inherited):

1. **Class-balanced adversarial terms.** Every discriminator BCE (D's loss and the
   segmentor's fool-D loss, main and aux output) is a weighted sum over D's output grid
   with weights ``w = 1/2 * a / sum(a) + 1/2 * (1 - a) / sum(1 - a)``, where ``a`` is the
   lesion share of each output cell (area-pooled lesion mask of that domain's rows: source
   labels; target shot labels; hard predictions ``sigmoid > 0.5`` on unlabeled rows). Cells
   that contain lesion carry half the loss however small the lesion fraction, so "look
   like source" can no longer be satisfied by the background cells alone.
2. **Lesion-fraction prior from the k shots.** ``pi`` = mean lesion fraction of the k
   labeled shots, band ``[prior_lo * pi, prior_hi * pi]`` (defaults 0.25, 2: wide, because
   k may be 1 and the shots are lesion-positive slices while unlabeled batches also hold
   lesion-free ones). On the unlabeled target batch, with the sharpened soft fraction
   ``f = mean sigmoid(prior_sharpness * z_u)`` (a smooth stand-in for the hard fraction
   ``mean(z_u > 0)``; ``prior_sharpness = 4``):
   ``L_prior = (log(lo / f))_+^2 + (log(f / hi))_+^2`` -- zero inside the band,
   ``log(2)^2 = 0.48`` at half the lower bound, growing without bound as the batch
   collapses (``f -> 0``).

Exact losses (source label 0, target label 1; ``sum_w`` = class-balanced weighted sum over
the output grid, ``T`` = shots + unlabeled rows):

    segmentor: L = seg(z_s) + seg(z_t) + aux_seg_weight * [seg(a_s) + seg(a_t)]
                 + lambda_adv * sum_w BCE(D(X_T), 0)
                 + aux_adv_ratio * lambda_adv * sum_w BCE(D_aux(X^aux_T), 0)
                 + prior_weight * L_prior(z_u)
    D, D_aux:  1/2 sum_w BCE(D(X_s), 0) + 1/2 sum_w BCE(D(X_T), 1)

``X`` is the softmax map ``[1 - sigmoid, sigmoid]`` (``input = "softmax"``, default) or
ADVENT's self-information map ``-P log P / log 2`` (``input = "entropy"``).
"""

from __future__ import annotations

from typing import Any

import torch

from fewshot_transfer.adaptation.losses import INPUTS, lesion_prior_band, lesion_prior_penalty
from fewshot_transfer.learners.adaptseg import AdaptSeg
from fewshot_transfer.learners.base import register


@register
class AdaptSegBalanced(AdaptSeg):
    name = "adaptseg-balanced"
    balanced = True
    defaults = {
        **AdaptSeg.defaults,
        "prior_weight": 0.1,
        "prior_lo": 0.25,
        "prior_hi": 2.0,
        "prior_sharpness": 4.0,
    }

    @staticmethod
    def search_space(trial: Any) -> dict[str, Any]:
        return {
            **AdaptSeg.search_space(trial),
            "prior_weight": trial.suggest_float("prior_weight", 1e-3, 1.0, log=True),
            "input": trial.suggest_categorical("input", list(INPUTS)),
        }

    def prepare(self, ctx) -> None:
        labeled = ctx.support.masks[ctx.support.labeled]
        p = ctx.params
        self.prior, self.prior_lo, self.prior_hi = lesion_prior_band(labeled, p.prior_lo, p.prior_hi)

    def lesion_masks(self, batch):
        _, _, lg_u = batch.parts(batch.logits)
        lesion_u = (lg_u.detach() > 0).float()  # sigmoid > 0.5
        return batch.y_src, torch.cat([batch.y_tgt, lesion_u])

    def segmentor_terms(self, ctx, step, batch, adversary):
        terms, stats = super().segmentor_terms(ctx, step, batch, adversary)
        if batch.n_unl:
            _, _, lg_u = batch.parts(batch.logits)
            p = ctx.params
            penalty = lesion_prior_penalty(lg_u, self.prior_lo, self.prior_hi, p.prior_sharpness)
            terms.append(("prior", p.prior_weight, penalty))
        stats["prior_frac"] = self.prior
        return terms, stats
