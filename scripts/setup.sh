#!/usr/bin/env bash
# Install ftbench into the active Python environment.
#   bash scripts/setup.sh          # the toolkit
#   bash scripts/setup.sh --test   # plus the test extras (pytest, higher, psycopg2)
# Where no torch is installed yet, the CPU build is put in place first, so pip does not
# pull a multi-GB CUDA build; an existing torch (e.g. a CUDA build on a GPU node) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q torch
fi
"$PY" -m pip install -q -e ".${extras}"
"$PY" -c "import torch, fewshot_transfer; print('ftbench', fewshot_transfer.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
