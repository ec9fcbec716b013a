"""Adversarial domain adaptation pieces shared by the ``adversarial`` learners.

* :mod:`~fewshot_transfer.adaptation.discriminators` -- pixel (feature-level) and
  fully-convolutional output-space discriminators;
* :mod:`~fewshot_transfer.adaptation.losses` -- region-masked and output-space adversarial
  losses (as ``nn.Module`` losses that own their discriminators), entropy maps, the
  lesion-fraction prior;
* :mod:`~fewshot_transfer.adaptation.probe` -- the held-out linear probe of domain separability;

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
    domain_accuracy,
    entropy_map,
    fraction_penalty,
    gather_pixels,
    lesion_prior_band,
    lesion_prior_penalty,
    masked_mean,
    output_space_input,
    region_at,
    self_information,
    slice_level_prior,
    soft_lesion_fraction,
)
from fewshot_transfer.adaptation.probe import class_probe, domain_probe, probe_accuracy

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
    "domain_accuracy",
    "class_probe",
    "domain_probe",
    "entropy_map",
    "fraction_penalty",
    "gather_pixels",
    "lesion_prior_band",
    "lesion_prior_penalty",
    "masked_mean",
    "output_space_input",
    "probe_accuracy",
    "region_at",
    "self_information",
    "set_requires_grad",
    "slice_level_prior",
    "soft_lesion_fraction",
]
