#!/usr/bin/env bash
# Session 26, call 4: the bound arithmetic's rounding fix (4b6aae5) on CUDA through inductor: the exact bound tests,
# and the attacks that reach the clip factor (underflow, huge, corrupt and cancelling samples; tied cancellation).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor TORCHINDUCTOR_COMPILE_THREADS=1 PYTHONUNBUFFERED=1 \
  timeout -s INT -k 15 "${LIMIT:-170}" python3 -m pytest -q -n "${WORKERS:-15}" -p no:cacheprovider -rf --tb=short \
  tests/test_norm_bounds.py tests/test_adversarial.py tests/test_tied.py \
  -k "exact or own_roundings or last_rounding or no_room or underflow or huge or cancellation or within_R or corrupt or nan" \
  >"$OUT/call4-tests.log" 2>&1
echo "exit $?"
tail -25 "$OUT/call4-tests.log"
date -u
