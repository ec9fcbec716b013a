"""Shared training pieces below the learners: context, segmenter, model cache, loops, streams.

Everything a learner (and the adversarial / meta-learning machinery) builds on lives here
once; this layer imports only ``data``, ``models`` and the core modules.
"""

from fewshot_transfer.training.context import (
    LearnerContext,
    LossCurves,
    PoolWithheld,
    ProgressCallback,
    TrainingDiverged,
)
from fewshot_transfer.training.loops import StepBatch, StepHooks, train_steps, train_supervised
from fewshot_transfer.training.model_cache import ModelCache
from fewshot_transfer.training.params import Params
from fewshot_transfer.training.pretrain import PRETRAIN_VERSION, pretrained_source_model
from fewshot_transfer.training.segmenter import Segmenter
from fewshot_transfer.training.streams import (
    labeled_batches,
    slice_batches,
    source_rows,
    unlabeled_batches,
)

__all__ = [
    "PRETRAIN_VERSION",
    "LearnerContext",
    "LossCurves",
    "ModelCache",
    "Params",
    "PoolWithheld",
    "ProgressCallback",
    "Segmenter",
    "StepBatch",
    "StepHooks",
    "TrainingDiverged",
    "labeled_batches",
    "pretrained_source_model",
    "slice_batches",
    "source_rows",
    "train_steps",
    "train_supervised",
    "unlabeled_batches",
]
