#!/usr/bin/env bash
# Session 25, call 1: the full tracebacks of the CUDA-only inductor fallbacks (lowering_errors.py), and, beside it,
# the cache test with its new noisy-process assertion (test_core -k second_run) on CUDA through inductor.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
date -u; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
(DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor timeout 520 python3 -m pytest -x -q -p no:cacheprovider \
   tests/test_core.py -k second_run >"$OUT/cache-test.log" 2>&1; echo "cache test exit $?" >>"$OUT/cache-test.log") &
timeout 480 python3 benchmarks/results/2026-12-03-h200-s25/lowering_errors.py >"$OUT/lowering-errors.log" 2>&1
echo "lowering_errors exit $?"
grep -n "^===\|^---\|Error\|error" "$OUT/lowering-errors.log" | head -60
wait
tail -5 "$OUT/cache-test.log"
date -u
