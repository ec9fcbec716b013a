"""Research experiments that write ``results/``, each a module run with ``python -m``.

    python -m fewshot_transfer.experiments.controls NAME [--draw D] --out results/controls/NAME
    python -m fewshot_transfer.experiments.screen_collapse imbalance --axis ... --out results/controls/imbalance-grid
    python -m fewshot_transfer.experiments.noise --out results/noise

They run from a source checkout (the repository root): the scenario presets they read are in
``configs/scenarios/`` and the tables they write go under ``results/``. Speed measurements
stay in ``benchmarks/``.
"""

from __future__ import annotations

from pathlib import Path

#: The source checkout this package runs from (its ``configs/`` and ``results/``).
ROOT = Path(__file__).resolve().parents[2]
