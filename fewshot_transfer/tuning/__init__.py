"""Hyperparameter tuning (``ftbench tune``) and multi-machine execution (``ftbench worker``).

* :mod:`fewshot_transfer.tuning.study`: one Optuna study per (learner, k) whose objective is
  the mean Dice over a few paired episodes on a validation split carved from the target
  support pool (never the test set), with pruning, resumable RDB storage, heartbeats and
  ``best.toml``.
* :mod:`fewshot_transfer.tuning.distributed`: a benchmark grid executed by several workers
  through one Optuna RDB storage used as a work queue (one study per grid, one enqueued
  trial per cell).

Optuna is imported inside these modules only, never at package import.
"""
