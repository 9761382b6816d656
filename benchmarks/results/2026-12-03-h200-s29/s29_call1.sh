#!/usr/bin/env bash
# Session 29, call 1: the test files the TF32 default (c6edc1f) touches, on CUDA through inductor's default config:
# the plan's choice, the certified TF32 products and their crafted-truncation attacks, the bound tests, the GPU
# paths, torchvision/timm models (fp32 and bf16 autocast cases included).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor TORCHINDUCTOR_COMPILE_THREADS=1 PYTHONUNBUFFERED=1 \
  timeout -s INT -k 15 "${LIMIT:-330}" python3 -m pytest -q -n "${WORKERS:-15}" -p no:cacheprovider -rfs --tb=short \
  --durations=10 tests/test_precision.py tests/test_adversarial.py tests/test_norm_bounds.py tests/test_core.py \
  tests/test_gpu_paths.py tests/test_vision_libraries.py >"$OUT/call1-tests.log" 2>&1
echo "tests exit $?"
grep -v "PASSED" "$OUT/call1-tests.log" | tail -45
date -u
