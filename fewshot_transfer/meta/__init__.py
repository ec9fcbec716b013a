"""Meta-learning on the shared backbone: one engine and the meta-training loop.

``engine`` holds the function form (``inner_adapt``, ``meta_gradient``,
``reptile_direction``, ``adapted_query_loss``); ``training`` meta-trains on CAP tasks
(cached per config, seed and data), measures the meta-validation loss before and after,
and adapts on the k shots with finetune's loop. The learners ``maml``, ``maml-fewstep``,
``fomaml``, ``reptile``, ``anil``, ``anil-control`` and ``metasgd`` are thin files in
``fewshot_transfer/learners/``. The transfer-vs-meta report section is
``harness/transfer_vs_meta.py``.
"""

from fewshot_transfer.meta.engine import (
    MetaGradient,
    Task,
    adam_update,
    adapted_query_loss,
    init_lrs,
    inner_adapt,
    meta_gradient,
    module_params,
    names_matching,
    reptile_direction,
    sgd_update,
    task_query_loss,
)

__all__ = [
    "MetaGradient",
    "Task",
    "adam_update",
    "adapted_query_loss",
    "init_lrs",
    "inner_adapt",
    "meta_gradient",
    "module_params",
    "names_matching",
    "reptile_direction",
    "sgd_update",
    "task_query_loss",
]
