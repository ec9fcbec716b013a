"""Adversarial domain-adaptation losses, each a small piece that plugs into any segmentor.

Conventions: domain label **source = 0, target = 1**; discriminators output logits and
every BCE is ``binary_cross_entropy_with_logits``. The segmentor is trained with the
non-saturating "fool D" loss -- target inputs labeled as *source* -- in alternating
updates with the discriminator (AdaptSegNet's scheme, used by all four adversarial
learners; see ``docs/adversarial.md`` for why this rather than gradient reversal).

Functions (testable, reusable):

* :func:`binary_softmax`, :func:`self_information`, :func:`entropy_map`, :func:`output_space_input`
  -- what an output-space discriminator sees;
* :func:`masked_mean`, :func:`gather_pixels`, :func:`region_at`, :func:`domain_bce`,
  :func:`domain_accuracy` -- region-restricted BCE and D accuracy;
* :func:`confident_regions` -- lesion / background pixels from confident predictions, with an ignore band;
* :func:`class_balanced_weights` -- per-cell weights giving lesion and background half each;
* :func:`slice_level_prior`, :func:`lesion_prior_band`, :func:`soft_lesion_fraction`,
  :func:`fraction_penalty`, :func:`lesion_prior_penalty` -- the lesion-fraction prior.

Modules (TLlib-style: the loss owns its discriminators):

* :class:`RegionAdversarialLoss` -- feature-level, one :class:`PixelDiscriminator` per region
  (``{"pos", "neg"}`` for dual-adv, ``{"all"}`` for single-adv);
* :class:`OutputAdversarialLoss` -- output-space (AdaptSegNet / ADVENT), optionally
  class-balanced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_transfer.adaptation.discriminators import SOURCE_LABEL, TARGET_LABEL

INPUTS = ("softmax", "entropy")


# ----------------------------------------------------------------------------- output-space inputs
def binary_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` lesion logits -> the 2-class softmax ``[1 - sigmoid, sigmoid]`` ``[B, 2, H, W]``."""
    return torch.cat([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)


def self_information(prob: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """ADVENT's weighted self-information map ``-P log P / log C`` (per class channel, in [0, 1/e·log C])."""
    c = prob.shape[1]
    return -prob * torch.log(prob.clamp_min(eps)) / math.log(c)


def entropy_map(prob: torch.Tensor) -> torch.Tensor:
    """Normalized Shannon entropy ``[B, 1, H, W]`` in [0, 1] (sum of :func:`self_information`)."""
    return self_information(prob).sum(dim=1, keepdim=True)


def output_space_input(logits: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    """What an output-space discriminator sees: the softmax map, or ADVENT's self-information map."""
    prob = binary_softmax(logits)
    if kind == "softmax":
        return prob
    if kind == "entropy":
        return self_information(prob)
    raise ValueError(f"unknown discriminator input {kind!r}; choose one of {', '.join(INPUTS)}")


# ----------------------------------------------------------------------------- region helpers
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` (same shape, bool or {0,1}); 0 (still in the graph) when empty."""
    m = mask.to(values.dtype)
    n = m.sum()
    if float(n) == 0.0:
        return (values * m).sum()
    return (values * m).sum() / n


def gather_pixels(features: torch.Tensor, mask: torch.Tensor, max_pixels: int = 0) -> torch.Tensor:
    """Feature vectors ``[N, C]`` of the pixels where ``mask`` (``[B, 1, H, W]`` or ``[B, H, W]``) is true.

    With ``max_pixels > 0`` and more pixels than that in the mask, a uniform random subset
    of ``max_pixels`` of them (torch's global RNG, seeded per cell by the harness): the mean
    over the subset is an unbiased estimate of the masked mean at a fraction of the cost
    (background covers ~95 % of 12 x 64 x 64 pixels).
    """
    if mask.ndim == 4:
        mask = mask[:, 0]
    vectors = features.permute(0, 2, 3, 1)[mask.bool()]
    if 0 < max_pixels < vectors.shape[0]:
        vectors = vectors[torch.randperm(vectors.shape[0], device=vectors.device)[:max_pixels]]
    return vectors


def domain_bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Elementwise BCE of discriminator logits against a constant domain label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label), reduction="none")


def confident_regions(
    prob: torch.Tensor, threshold: float = 0.9, ignore_radius: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lesion, background) bool masks from predictions ``[B, 1, H, W]``, with an ignore band.

    Lesion: ``prob > threshold``. Background: ``prob < 1 - threshold`` *and* farther than
    ``ignore_radius`` pixels from any pixel that is not confident background. Everything
    else is ignored. The band keeps the rim of a half-detected lesion (ground glass the
    source model sees at ``prob`` 0.05-0.5) out of the background discriminator, which
    would otherwise push missed lesion features toward source background.
    """
    prob = prob.detach()
    pos = prob > threshold
    neg = prob < 1.0 - threshold
    if ignore_radius > 0:
        size = 2 * ignore_radius + 1
        unsure = F.max_pool2d((~neg).float(), size, stride=1, padding=ignore_radius) > 0
        neg = neg & ~unsure
    return pos, neg


def class_balanced_weights(lesion: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Weights ``[B, 1, h, w]`` on a discriminator's ``h x w`` output cells that give lesion and background half each.

    ``lesion`` (``[B, 1, H, W]``, {0,1}) is area-pooled to the output grid, so a cell's lesion
    share ``a`` is the fraction of its pixels that are lesion. Over the whole batch,
    ``w = 0.5 * a / sum(a) + 0.5 * (1 - a) / sum(1 - a)`` (sums to 1). When a class is absent
    from the batch the other gets all the weight (plain mean).
    """
    a = F.adaptive_avg_pool2d(lesion.float(), tuple(size))
    pos, neg = a.sum(), (1.0 - a).sum()
    if float(pos) <= 0.0:
        return (1.0 - a) / neg
    if float(neg) <= 0.0:
        return a / pos
    return 0.5 * a / pos + 0.5 * (1.0 - a) / neg


# ----------------------------------------------------------------------------- lesion-fraction prior
def lesion_prior_band(masks: np.ndarray, lo_ratio: float = 0.25, hi_ratio: float = 2.0) -> tuple[float, float, float]:
    """(prior, lower, upper) lesion fraction: the mean of ``masks`` ``[n, H, W]``, band ``[lo_ratio, hi_ratio] * prior``."""
    if masks.size == 0:
        raise ValueError("lesion_prior_band needs at least one labeled slice")
    prior = float(np.asarray(masks, dtype=np.float64).mean())
    return prior, lo_ratio * prior, hi_ratio * prior


def slice_level_prior(shot_masks: np.ndarray, reference_masks: np.ndarray) -> float:
    """Expected lesion fraction of an *unlabeled* target slice, corrected for lesion-free slices.

    Shots are drawn from lesion-positive slices, while the unlabeled pool also holds slices
    without lesion, so the shots' mean fraction over-states an unlabeled batch's. The prior
    is (mean lesion fraction of the lesion-positive shots) x (share of lesion-positive
    slices), the share estimated from a labeled reference pool (the source training
    slices: target slices have no labels to count). With no shots (k = 0) it is the
    reference pool's mean lesion fraction.
    """
    ref = np.asarray(reference_masks, dtype=np.float64)
    if ref.size == 0:
        raise ValueError("slice_level_prior needs labeled reference slices")
    positive_share = float((ref.reshape(len(ref), -1).max(axis=1) > 0).mean())
    shots = (
        np.asarray(shot_masks, dtype=np.float64).reshape(len(shot_masks), -1) if len(shot_masks) else np.zeros((0, 1))
    )
    shots = shots[shots.max(axis=1) > 0] if shots.size else shots
    if shots.shape[0] == 0:
        return float(ref.mean())
    return float(shots.mean()) * positive_share


def soft_lesion_fraction(logits: torch.Tensor, sharpness: float = 4.0) -> torch.Tensor:
    """``mean sigmoid(sharpness * z)``: a smooth stand-in for the hard fraction ``mean(z > 0)``
    the leaderboard reports (the plain soft mean of an uncertain model, 0.1 everywhere, would
    read as a 10 % lesion burden with no pixel above threshold)."""
    return torch.sigmoid(sharpness * logits).mean()


def fraction_penalty(f: torch.Tensor, lower: float, upper: float, eps: float = 1e-6) -> torch.Tensor:
    """``(log(lower / f))_+^2 + (log(f / upper))_+^2``: zero inside the band, scale-free
    (2x below it costs ``log(2)^2 = 0.48`` at any prior), unbounded as ``f -> 0`` or floods."""
    f = f.clamp_min(eps)
    lo = torch.relu(torch.log(lower / f))
    hi = torch.relu(torch.log(f / upper))
    return lo * lo + hi * hi


def lesion_prior_penalty(
    logits: torch.Tensor, lower: float, upper: float, sharpness: float = 4.0, eps: float = 1e-6
) -> torch.Tensor:
    """:func:`fraction_penalty` of one batch's :func:`soft_lesion_fraction`. Because
    ``d log f / d z_i`` is proportional to pixel i's share of ``f``, a collapsing batch is
    pulled back through its most lesion-like pixels first."""
    return fraction_penalty(soft_lesion_fraction(logits, sharpness), lower, upper, eps)


# ----------------------------------------------------------------------------- feature level
def region_at(mask: torch.Tensor, size: tuple[int, int] | torch.Size, *, whole: bool) -> torch.Tensor:
    """A region mask ``[B, 1, H, W]`` at a feature map's ``size``: a cell belongs to the region when
    *any* of its pixels does (``whole = False``, for the rare lesion region) or *all* of them do
    (``whole = True``, for background: a cell touching a lesion or an ignored pixel is not background)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask.bool()
    m = mask.float()
    if whole:
        return ~(F.adaptive_max_pool2d(1.0 - m, tuple(size)) > 0)
    return F.adaptive_max_pool2d(m, tuple(size)) > 0


def domain_accuracy(logits: torch.Tensor, label: float) -> float:
    """Share of discriminator logits on the right side of 0 for domain ``label`` (NaN when empty)."""
    if logits.numel() == 0:
        return float("nan")
    right = logits > 0 if label == TARGET_LABEL else logits < 0
    return float(right.float().mean())


class RegionAdversarialLoss(nn.Module):
    """Feature-level adversary: one discriminator per region, each loss a masked mean over its region.

    ``regions`` maps a region name to bool masks ``[B, 1, h, w]`` (at the feature map's
    size) telling which positions belong to it (dual-adv: ``"pos"`` = lesion, ``"neg"`` =
    background; single-adv: ``"all"``). ``D_r`` runs over the whole feature map (so a 3x3
    discriminator sees each position's neighbourhood) and its loss is read only at region
    ``r``'s positions: every region is a separate domain game and the tiny lesion region is
    not averaged into the background.

    Discriminator loss (features detached), over the regions ``r`` present in both domains:
        ``L_D = mean_r [ 1/2 mean_{i in r, src} BCE(D_r(f)_i, 0) + 1/2 mean_{j in r, tgt} BCE(D_r(f)_j, 1) ]``
    Segmentor ("fool D") loss, over the regions present in the target batch:
        ``L_adv = mean_r mean_{j in r, tgt} BCE(D_r(f)_j, 0)``
    Stats: ``disc_r`` and D's accuracy per region and domain, ``dacc_r_src`` / ``dacc_r_tgt``.
    """

    def __init__(self, discriminators: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not discriminators:
            raise ValueError("RegionAdversarialLoss needs at least one discriminator")
        self.discriminators = nn.ModuleDict(dict(discriminators))

    @property
    def regions(self) -> list[str]:
        return list(self.discriminators)

    @staticmethod
    def _at(logit_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return logit_map.permute(0, 2, 3, 1)[mask[:, 0].bool()][:, 0]

    def discriminator_loss(
        self,
        f_src: torch.Tensor,
        src_regions: Mapping[str, torch.Tensor],
        f_tgt: torch.Tensor,
        tgt_regions: Mapping[str, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, float]]:
        terms, stats = [], {}
        for name, disc in self.discriminators.items():
            m_s, m_t = src_regions[name], tgt_regions[name]
            if not bool(m_s.any()) or not bool(m_t.any()):
                continue  # a one-domain batch would only teach D a constant answer
            s = self._at(disc(f_src.detach()), m_s)
            t = self._at(disc(f_tgt.detach()), m_t)
            term = 0.5 * domain_bce(s, SOURCE_LABEL).mean() + 0.5 * domain_bce(t, TARGET_LABEL).mean()
            terms.append(term)
            stats[f"disc_{name}"] = float(term.detach())
            stats[f"dacc_{name}_src"] = domain_accuracy(s.detach(), SOURCE_LABEL)
            stats[f"dacc_{name}_tgt"] = domain_accuracy(t.detach(), TARGET_LABEL)
        if not terms:
            return f_src.new_zeros(()), stats
        return torch.stack(terms).mean(), stats

    def adversarial_loss(
        self, f_tgt: torch.Tensor, tgt_regions: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        terms, stats = [], {}
        for name, disc in self.discriminators.items():
            m_t = tgt_regions[name]
            if not bool(m_t.any()):
                continue
            term = domain_bce(self._at(disc(f_tgt), m_t), SOURCE_LABEL).mean()
            terms.append(term)
            stats[f"adv_{name}"] = float(term.detach())
        if not terms:
            return (f_tgt * 0.0).sum(), stats
        return torch.stack(terms).mean(), stats


# ----------------------------------------------------------------------------- output space
class OutputAdversarialLoss(nn.Module):
    """Output-space adversary (AdaptSegNet; ADVENT with ``input="entropy"``), optionally class-balanced.

    ``X = output_space_input(logits, input)``; ``D`` maps it to a logit grid ``[B, 1, h, w]``.
    Unbalanced (the reference), means over the grid:
        ``L_D   = 1/2 mean BCE(D(X_s), 0) + 1/2 mean BCE(D(X_t), 1)``
        ``L_adv = mean BCE(D(X_t), 0)``
    Balanced: every mean becomes a weighted sum with :func:`class_balanced_weights` of that
    domain's lesion mask (labels, or hard predictions where there are none), so lesion
    cells and background cells carry half the loss each whatever the lesion fraction.
    """

    def __init__(self, discriminator: nn.Module, input: str = "softmax", balanced: bool = False) -> None:
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"unknown discriminator input {input!r}; choose one of {', '.join(INPUTS)}")
        self.discriminator = discriminator
        self.input = input
        self.balanced = balanced

    def _reduce(self, d: torch.Tensor, label: float, lesion: torch.Tensor | None) -> torch.Tensor:
        bce = domain_bce(d, label)
        if not self.balanced or lesion is None:
            return bce.mean()
        return (class_balanced_weights(lesion, d.shape[-2:]) * bce).sum()

    def discriminator_loss(
        self,
        logits_src: torch.Tensor,
        logits_tgt: torch.Tensor,
        lesion_src: torch.Tensor | None = None,
        lesion_tgt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """D's loss on detached maps, and its accuracy per domain (``dacc_src`` / ``dacc_tgt``, over output cells)."""
        d_s = self.discriminator(output_space_input(logits_src.detach(), self.input))
        d_t = self.discriminator(output_space_input(logits_tgt.detach(), self.input))
        loss = 0.5 * self._reduce(d_s, SOURCE_LABEL, lesion_src) + 0.5 * self._reduce(d_t, TARGET_LABEL, lesion_tgt)
        stats = {
            "dacc_src": domain_accuracy(d_s.detach(), SOURCE_LABEL),
            "dacc_tgt": domain_accuracy(d_t.detach(), TARGET_LABEL),
        }
        return loss, stats

    def adversarial_loss(self, logits_tgt: torch.Tensor, lesion_tgt: torch.Tensor | None = None) -> torch.Tensor:
        x_t = output_space_input(logits_tgt, self.input)
        return self._reduce(self.discriminator(x_t), SOURCE_LABEL, lesion_tgt)
