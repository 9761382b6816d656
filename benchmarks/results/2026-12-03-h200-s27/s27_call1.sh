#!/usr/bin/env bash
# Session 27, call 1: the bound arithmetic's rounding fixes (4b6aae5, 9cb1d53, f2c163d) and the conv rule's
# drop_recomputed_outputs (95c65d1), and the plan's per-sample implementation and TF32 choice as Site fields (the conv
# rule's `implementation`), on CUDA through inductor (the exact bound tests, the attacks that reach the clip
# factor); then the peers on torchvision's ResNet-18 at 32² and 224² in fp32, beside non-private torch.compile and
# dpcompile auto in the same run.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor TORCHINDUCTOR_COMPILE_THREADS=1 PYTHONUNBUFFERED=1 \
  timeout -s INT -k 15 "${LIMIT:-150}" python3 -m pytest -q -n "${WORKERS:-15}" -p no:cacheprovider -rf --tb=short \
  tests/test_norm_bounds.py tests/test_adversarial.py tests/test_tied.py tests/test_core.py tests/test_precision.py \
  -k "exact or own_roundings or last_rounding or no_room or underflow or huge or cancellation or within_R or corrupt or nan or copied_convolution or every_conv_per_sample_path or tf32" \
  >"$OUT/call1-tests.log" 2>&1
echo "tests exit $?"
tail -25 "$OUT/call1-tests.log"
date -u
BUDGET=${BUDGET:-300} HARD_LIMIT=${HARD_LIMIT:-340} AMPS=fp32 CORE=compile,dpcompile POLICIES=auto \
  PEERS=opacus_oop,fastdp,private_vision NAME=s27-tv18 bash benchmarks/suite_gpu.sh tv_resnet18_32 tv_resnet18_224 2>&1 | tail -40
date -u
