"""``adaptseg``: AdaptSegNet output-space adversarial DA (Tsai et al. 2018), the reference baseline.

Two fully-convolutional discriminators (:class:`OutputDiscriminator`, 4x4 convs stride 2,
LeakyReLU 0.2, widths ``base, 2base, 4base, 8base`` scaled to the U-Net) look at the binary
softmax maps ``P = [1 - sigmoid(z), sigmoid(z)]`` of the main output and of the auxiliary
output (decoder level 2, ``feats["aux_logits"]``). Source label 0, target label 1; the
target domain is the target shots plus the unlabeled target batch (only the unlabeled
rows at k = 0). The aux head is trained in source pretraining (``training/pretrain.py``),
so D_aux sees real prediction maps from step 1; ``aux_adv_ratio = 0`` makes the learner
single-level (D_aux neither trained nor used).

    segmentor: L = seg(z over all labeled rows)                          (main output)
                 + aux_seg_weight * seg(a over all labeled rows)           (aux output, AdaptSegNet's 0.1)
                 + lambda_adv * mean BCE(D(P_t), 0)                        (lambda_adv = 1e-3)
                 + aux_adv_ratio * lambda_adv * mean BCE(D_aux(P^aux_t), 0) (0.2 x 1e-3 = 2e-4)
    D, D_aux:  1/2 mean BCE(D(P_s), 0) + 1/2 mean BCE(D(P_t), 1)            (on detached maps)

``seg`` is the shared soft-Dice + BCE (the reference uses cross-entropy), ``mean`` runs over
D's output grid. Discriminators: Adam(``d_lr``, betas (0.9, 0.99)); alternating updates
as in the reference, through the shared loop (``learners/adversarial.py``). Starts from the cached CAP-pretrained backbone. With ``input =
"entropy"`` D sees ADVENT's self-information map ``-P log P / log 2`` instead of ``P``.

This is the variant the brief expects to collapse under class imbalance (source maps are
almost all background, and predicting no lesion is the cheapest way to look like source);
the leaderboard's pred/true lesion fraction and ``collapsed`` flag show whether it does.
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot_transfer.adaptation.discriminators import OutputDiscriminator
from fewshot_transfer.adaptation.losses import INPUTS, OutputAdversarialLoss, output_space_input
from fewshot_transfer.learners.adversarial import AdversarialBatch, AdversarialLearner
from fewshot_transfer.learners.base import register
from fewshot_transfer.learners.hparams import HP, Categorical
from fewshot_transfer.losses import seg_loss
from fewshot_transfer.training import LearnerContext

AUX = "aux_logits"


class OutputAdversary(nn.Module):
    """The main-output and auxiliary-output adversaries of one AdaptSeg learner."""

    def __init__(self, main: OutputAdversarialLoss, aux: OutputAdversarialLoss) -> None:
        super().__init__()
        self.main = main
        self.aux = aux


@register
class AdaptSeg(AdversarialLearner):
    name = "adaptseg"
    #: Class-balanced weighting of the adversarial terms (adaptseg-balanced sets it).
    balanced: bool = False
    hparams = {
        **AdversarialLearner.hparams,
        "lambda_adv": AdversarialLearner.hparams["lambda_adv"].but(default=0.001),
        "aux_adv_ratio": HP(
            0.2,
            "weight of the aux-output adversarial term relative to lambda_adv (0: single-level)",
            search=Categorical((0.0, 0.2)),
        ),
        "aux_seg_weight": HP(0.1, "weight of the aux output's segmentation loss"),
        "input": HP("softmax", f"what the discriminators see: one of {', '.join(INPUTS)}"),
        "d_depth": HP(4, "stride-2 convolutions of each output discriminator"),
    }

    # -- pieces reused by adaptseg-balanced --------------------------------------------
    def build_adversary(self, ctx: LearnerContext, model: nn.Module) -> OutputAdversary:
        kind = ctx.params.input
        if kind not in INPUTS:
            raise ValueError(f"{self.name}: input must be one of {', '.join(INPUTS)}, got {kind!r}")
        depth = ctx.params.d_depth

        def make() -> OutputAdversarialLoss:
            return OutputAdversarialLoss(OutputDiscriminator.for_backbone(model, 2, depth), kind, self.balanced)

        return OutputAdversary(make(), make())

    def aligned(self, ctx, model):
        kind = ctx.params.input
        return f"output:{kind}", lambda x: output_space_input(model(x), kind)

    def lesion_masks(self, batch: AdversarialBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Lesion masks of the source and target rows for class-balanced weighting (None = unweighted)."""
        return None, None

    def segmentor_terms(self, ctx, batch, adversary, lam):
        p = ctx.params
        aux = batch.feats[AUX]
        _, m_t = self.lesion_masks(batch)
        terms = [("seg_aux", p.aux_seg_weight, seg_loss(aux[: batch.n_src + batch.n_tgt], batch.y_labeled))]
        if adversary is not None:
            terms += [
                ("adv", lam, adversary.main.adversarial_loss(batch.target(batch.logits), m_t)),
                ("adv_aux", lam * p.aux_adv_ratio, adversary.aux.adversarial_loss(batch.target(aux), m_t)),
            ]
        return terms, self.extra_stats(batch)

    def extra_stats(self, batch: AdversarialBatch) -> dict[str, float]:
        _, _, lg_u = batch.parts(batch.logits)
        if not batch.n_unl:
            return {}
        return {"pred_frac_u": float((lg_u.detach() > 0).float().mean())}

    def discriminator_loss(self, ctx, batch, adversary):
        m_s, m_t = self.lesion_masks(batch)
        aux = batch.feats[AUX]
        n = batch.n_src
        d_main, s_main = adversary.main.discriminator_loss(batch.logits[:n], batch.target(batch.logits), m_s, m_t)
        stats = {"disc_main": float(d_main.detach()), **{f"{k[:4]}_main_{k[5:]}": v for k, v in s_main.items()}}
        if ctx.params.aux_adv_ratio == 0:  # single-level: D_aux is not trained
            return d_main, stats
        d_aux, s_aux = adversary.aux.discriminator_loss(aux[:n], batch.target(aux), m_s, m_t)
        stats.update({"disc_aux": float(d_aux.detach()), **{f"{k[:4]}_aux_{k[5:]}": v for k, v in s_aux.items()}})
        return d_main + d_aux, stats
