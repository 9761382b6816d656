#!/usr/bin/env bash
# Session 25, call 4 (the budget's last minutes): the CantSplit traceback of the ghost tied LM, printed (-s).
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
