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
2. **Lesion-fraction prior, per unlabeled slice, tracked across batches.** ``pi`` = mean
   lesion fraction of the lesion-positive shots x the share of lesion-positive slices
   (counted on the labeled source slices: the unlabeled pool also holds lesion-free
   slices, which a prior from positive shots alone over-states); at k = 0 the source's
   mean lesion fraction. Band ``[prior_lo * pi, prior_hi * pi]``. The predicted fraction
   is an EMA across batches, ``F_t = m F_{t-1} + (1 - m) f_t`` (``m = prior_momentum``,
   ``F_{t-1}`` detached; ``f_t = mean sigmoid(prior_sharpness * z_u)`` of this batch's
   unlabeled rows), so a 2-row batch of lesion-free slices is not pushed to grow lesions:
   ``L_prior = (log(lo / F_t))_+^2 + (log(F_t / hi))_+^2``.

Exact losses (source label 0, target label 1; ``sum_w`` = class-balanced weighted sum over
the output grid, ``T`` = shots + unlabeled rows):

    segmentor: L = seg(z_s) + seg(z_t) + aux_seg_weight * [seg(a_s) + seg(a_t)]
                 + lambda_adv * sum_w BCE(D(X_T), 0)
                 + aux_adv_ratio * lambda_adv * sum_w BCE(D_aux(X^aux_T), 0)
                 + prior_weight * L_prior(F_t)
    D, D_aux:  1/2 sum_w BCE(D(X_s), 0) + 1/2 sum_w BCE(D(X_T), 1)

``X`` is the softmax map ``[1 - sigmoid, sigmoid]`` (``input = "softmax"``, default) or
ADVENT's self-information map ``-P log P / log 2`` (``input = "entropy"``).
"""

from __future__ import annotations

import torch

from fewshot_transfer.adaptation.losses import INPUTS, fraction_penalty, slice_level_prior, soft_lesion_fraction
from fewshot_transfer.learners.adaptseg import AdaptSeg
from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import HP, Categorical, LogUniform, without


@register
class AdaptSegBalanced(AdaptSeg):
    name = "adaptseg-balanced"
    balanced = True
    #: ``input`` moves to the end: it is searched here, after prior_weight.
    hparams = {
        **without(AdaptSeg.hparams, "input"),
        "prior_weight": HP(1.0, "weight of the lesion-fraction prior term", search=LogUniform(1e-2, 10.0)),
        "prior_lo": HP(0.25, "lower end of the prior band, as a multiple of the prior fraction"),
        "prior_hi": HP(4.0, "upper end of the prior band, as a multiple of the prior fraction"),
        "prior_sharpness": HP(10.0, "slope of the soft lesion indicator sigmoid(sharpness * logit)"),
        "prior_momentum": HP(0.9, "EMA momentum of the predicted lesion fraction across batches"),
        "input": AdaptSeg.hparams["input"].but(search=Categorical(INPUTS)),
    }

    def prepare(self, ctx) -> None:
        p = ctx.params
        shots = ctx.support.masks[ctx.support.labeled]
        prior = slice_level_prior(shots, ctx.source_train.masks[ctx.source_train.labeled])
        self.prior, self.prior_lo, self.prior_hi = prior, p.prior_lo * prior, p.prior_hi * prior
        self.fraction_ema: float | None = None

    def lesion_masks(self, batch):
        _, _, lg_u = batch.parts(batch.logits)
        lesion_u = (lg_u.detach() > 0).float()  # sigmoid > 0.5
        return batch.y_src, torch.cat([batch.y_tgt, lesion_u])

    def segmentor_terms(self, ctx, batch, adversary, lam):
        terms, stats = super().segmentor_terms(ctx, batch, adversary, lam)
        if batch.n_unl:
            _, _, lg_u = batch.parts(batch.logits)
            p = ctx.params
            f = soft_lesion_fraction(lg_u, p.prior_sharpness)
            if self.fraction_ema is not None:
                f = p.prior_momentum * self.fraction_ema + (1.0 - p.prior_momentum) * f
            self.fraction_ema = float(f.detach())
            terms.append(("prior", p.prior_weight, fraction_penalty(f, self.prior_lo, self.prior_hi)))
            stats["frac_ema_u"] = self.fraction_ema
        stats["prior_frac"] = self.prior
        return terms, stats
