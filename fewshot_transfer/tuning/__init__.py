"""Hyperparameter tuning (``ftbench tune``) and multi-machine execution (``ftbench worker``).

* :mod:`fewshot_transfer.tuning.study`: one Optuna study per (learner, k) whose objective is
  the mean Dice over a few paired episodes, with pruning and ``best.toml``;
* :mod:`fewshot_transfer.tuning.validation`: the validation split carved by patient from the
  target support pool (never the test set) that a study scores on;
* :mod:`fewshot_transfer.tuning.space`: which hyperparameters a study searches / pins;
* :mod:`fewshot_transfer.tuning.storage`: resumable RDB storage, heartbeats, retries;
* :mod:`fewshot_transfer.tuning.distributed`: a benchmark grid executed by several workers
  through one Optuna RDB storage used as a work queue (one study per grid, one enqueued
  trial per cell).

Optuna is imported inside these modules only, never at package import.
"""
