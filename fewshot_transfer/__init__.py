"""fewshot-transfer (ftbench): few-shot COVID-19 lung-CT lesion segmentation and CAP transfer benchmarks.

The package top level is the public API for code outside it (learner plugins, notebooks):
``from fewshot_transfer import Learner, register, train_supervised``. The names are
imported lazily, on first access, so ``import fewshot_transfer`` stays cheap (no torch)
and modules inside the package never go through this facade (tests/test_layering.py).
See docs/plugins.md for a complete example learner.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_API: dict[str, str] = {
    "Learner": "fewshot_transfer.learners.base",
    "Control": "fewshot_transfer.learners.base",
    "register": "fewshot_transfer.learners.base",
    "HP": "fewshot_transfer.learners.hparams",
    "LR": "fewshot_transfer.learners.hparams",
    "LogUniform": "fewshot_transfer.learners.hparams",
    "Uniform": "fewshot_transfer.learners.hparams",
    "IntRange": "fewshot_transfer.learners.hparams",
    "Categorical": "fewshot_transfer.learners.hparams",
    "LearnerContext": "fewshot_transfer.training",
    "Params": "fewshot_transfer.training",
    "Segmenter": "fewshot_transfer.training",
    "StepBatch": "fewshot_transfer.training",
    "StepHooks": "fewshot_transfer.training",
    "train_steps": "fewshot_transfer.training",
    "train_supervised": "fewshot_transfer.training",
    "slice_batches": "fewshot_transfer.training",
    "labeled_batches": "fewshot_transfer.training",
    "unlabeled_batches": "fewshot_transfer.training",
    "section": "fewshot_transfer.harness.report",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'fewshot_transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
