#!/usr/bin/env bash
# Run one `ftbench run` per cross-validation fold of a target without a test split, into
# OUT/fold0 ... OUT/fold{K-1}, each with the same arguments. Rerunning resumes: finished folds
# and cells are skipped. Source pretraining and meta-training do not depend on the fold, so
# the model cache computes them once per source x seed x setting and every fold loads them.
#   bash scripts/run_folds.sh OUT [--folds K] -- ftbench-run-arguments...
# e.g.
#   bash scripts/run_folds.sh results/real-claims -- --config configs/real.toml \
#       --source data/pseudo-coronacases --target data/semiseg --learners scratch,finetune --shots 0,5 --jobs 2
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/run_folds.sh OUT [--folds K] -- ftbench-run-arguments..." >&2
  exit 2
fi
out=$1; shift
folds=5
if [ "${1:-}" = "--folds" ]; then folds=$2; shift 2; fi
if [ "${1:-}" != "--" ]; then
  echo "run_folds.sh: put -- before the ftbench run arguments" >&2
  exit 2
fi
shift
for ((f = 0; f < folds; f++)); do
  echo "== fold $f of $folds -> $out/fold$f"
  ftbench run "$@" --set data.split.folds="$folds" --set data.split.fold="$f" --out "$out/fold$f"
done
