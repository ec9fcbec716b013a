"""Adversarial domain adaptation pieces shared by the ``adversarial`` learners.

* :mod:`~fewshot_transfer.adaptation.discriminators` -- pixel (feature-level) and
  fully-convolutional output-space discriminators;
* :mod:`~fewshot_transfer.adaptation.losses` -- region-masked and output-space adversarial
  losses (as ``nn.Module`` losses that own their discriminators), entropy maps, the
  lesion-fraction prior;

The learners' base class and shared loop live in ``fewshot_transfer/learners/adversarial.py``,
the learners in ``fewshot_transfer/learners/feature_adversarial.py``
(``dual-adv``, ``single-adv``), ``adaptseg.py`` and ``adaptseg_balanced.py``. See
``docs/adversarial.md``.
"""

from fewshot_transfer.adaptation.discriminators import (
    SOURCE_LABEL,
    TARGET_LABEL,
    OutputDiscriminator,
    PixelDiscriminator,
    set_requires_grad,
)
from fewshot_transfer.adaptation.losses import (
    OutputAdversarialLoss,
    RegionAdversarialLoss,
    binary_softmax,
    class_balanced_weights,
    confident_regions,
    entropy_map,
    gather_pixels,
    lesion_prior_band,
    lesion_prior_penalty,
    masked_mean,
    output_space_input,
    self_information,
)

__all__ = [
    "SOURCE_LABEL",
    "TARGET_LABEL",
    "OutputAdversarialLoss",
    "OutputDiscriminator",
    "PixelDiscriminator",
    "RegionAdversarialLoss",
    "binary_softmax",
    "class_balanced_weights",
    "confident_regions",
    "entropy_map",
    "gather_pixels",
    "lesion_prior_band",
    "lesion_prior_penalty",
    "masked_mean",
    "output_space_input",
    "self_information",
    "set_requires_grad",
]
