"""Shared test settings: a tiny benchmark config and an isolated dataset cache."""

from __future__ import annotations

import os

import pytest
import torch

from fewshot_transfer.testing import TINY as CHECK_TINY

#: Overrides that shrink the default benchmark to seconds: 32 px, a base-4 U-Net, 5 steps
#: (``fewshot_transfer.testing.TINY``, the config its learner checks run on), as CLI arguments.
TINY = [arg for override in CHECK_TINY for arg in ("--set", override)]


#: End-to-end modules: they run the CLI or whole learners on a tiny benchmark (grids, tuning
#: studies, multi-worker storage, every learner family). Marked ``integration`` here, by
#: file, so ``pytest -m "not integration"`` runs the unit tests in under a minute; a single
#: slow test in a unit module carries ``@pytest.mark.integration`` itself.
INTEGRATION_MODULES = frozenset(
    {
        "test_adversarial.py",
        "test_baselines.py",
        "test_distributed.py",
        "test_harness.py",
        "test_meta_learners.py",
        "test_registry.py",
        "test_run_on_imported.py",
        "test_tuning.py",
    }
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep test datasets and cached models out of the user's ~/.cache."""
    os.environ["FTBENCH_CACHE"] = str(tmp_path_factory.mktemp("ftbench-cache"))
    torch.set_num_threads(1)  # tiny nets: one thread is fastest, and immune to a busy machine
    yield


@pytest.fixture
def tiny_args():
    return list(TINY)
