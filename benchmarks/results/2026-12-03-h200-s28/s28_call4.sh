#!/usr/bin/env bash
# Session 28, call 4 (the budget's last minutes): TF32 by default where PyTorch uses it (c6edc1f) on CUDA through
# inductor: the plan's default choice per kind of product, and the TF32 tests of test_precision.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor TORCHINDUCTOR_COMPILE_THREADS=1 PYTHONUNBUFFERED=1 \
  timeout -s INT -k 10 "${LIMIT:-95}" python3 -m pytest -q -n "${WORKERS:-15}" -p no:cacheprovider -rfs --tb=short \
  tests/test_precision.py -k "tf32 or plan_puts" >"$OUT/call4-tests.log" 2>&1
echo "tests exit $?"
tail -15 "$OUT/call4-tests.log"
