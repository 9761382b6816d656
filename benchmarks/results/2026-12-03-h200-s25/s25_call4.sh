#!/usr/bin/env bash
# Prepared in session 25 for the next (no device time was left to run it): the CantSplit traceback of the ghost tied
# LM, printed (-s: pytest shows a passing test's output only so).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
here=benchmarks/results/2026-12-03-h200-s25
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor PYTHONPATH=$PWD/$here:$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 \
  timeout 100 python3 -m pytest -q -s -p no:cacheprovider -p report_lowering_errors \
  "tests/test_tied.py::test_tied_ghost_matches_torch_func[ghost-tied_lm]" >"$OUT/cantsplit.log" 2>&1
echo "exit $?"
grep -n "^===\|Error\|File .*torch/_inductor" "$OUT/cantsplit.log" | tail -40
