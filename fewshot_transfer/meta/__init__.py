"""Meta-learning on the shared backbone: one ``torch.func`` engine and the meta-training loop.

``engine`` holds the function form (``inner_adapt``, ``meta_gradient``,
``reptile_direction``) and the class form (``MetaModel``); ``training`` meta-trains on
source tasks (cached per config, seed and data) and adapts on the k target shots; the
learners ``maml``, ``fomaml``, ``reptile``, ``anil`` and ``metasgd`` are thin files in
``fewshot_transfer/learners/``. The transfer-vs-meta report
section is ``harness/transfer_vs_meta.py``.
"""

from fewshot_transfer.meta.engine import (
    MetaGradient,
    MetaModel,
    Task,
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
    "MetaModel",
    "Task",
    "init_lrs",
    "inner_adapt",
    "meta_gradient",
    "module_params",
    "names_matching",
    "reptile_direction",
    "sgd_update",
    "task_query_loss",
]
