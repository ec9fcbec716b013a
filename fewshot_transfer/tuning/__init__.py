"""Hyperparameter tuning (``ftbench tune``) and multi-machine execution (``ftbench worker``).

* :mod:`fewshot_transfer.tuning.study`: one Optuna study per (learner, k) whose objective is
  the mean Dice over a few paired episodes, with pruning and ``best.toml``;
* :mod:`fewshot_transfer.tuning.validation`: what a study scores on under each selection rule
  (the validation split carved by patient from the support pool, the folds of the k shots,
  the source validation split, or — as a marked oracle — the test set);
* :mod:`fewshot_transfer.tuning.protocol`: ``ftbench run --protocol tuned``, a study per
  learner and k;
* :mod:`fewshot_transfer.tuning.space`: which hyperparameters a study searches / pins;
* :mod:`fewshot_transfer.tuning.storage`: resumable RDB storage, heartbeats, retries;
* :mod:`fewshot_transfer.tuning.distributed`: a benchmark grid executed by several workers
  through one Optuna RDB storage used as a work queue (one study per grid, one enqueued
  trial per cell).

Optuna is imported inside these modules only, never at package import.
"""
