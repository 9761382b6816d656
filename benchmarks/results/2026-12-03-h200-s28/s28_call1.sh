#!/usr/bin/env bash
# Session 28, call 1: the twenty-seventh session's changes on CUDA through inductor (the pass manager's lint and note,
# the rewritten graph without analyses, the tests that mutation probing added); then the suite's timm ViT-S/16 224²
# b64 in bf16 with the peers, beside non-private torch.compile and dpcompile auto in the same run, through the split
# bench.py.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor TORCHINDUCTOR_COMPILE_THREADS=1 PYTHONUNBUFFERED=1 \
  timeout -s INT -k 15 "${LIMIT:-170}" python3 -m pytest -q -n "${WORKERS:-15}" -p no:cacheprovider -rfs --tb=short \
  tests/test_norm_bounds.py tests/test_adversarial.py tests/test_core.py tests/test_user_errors.py \
  -k "corrupt_in_one or rounding_up_from_the_subnormal or never_rounds_up or bounds_the_exact_gradient or within_its_rounding_margin or bag_values_within or margin_covers_fp32 or grows_by_its_last or no_graph_points or every_conv_per_sample_path or pass_that_fails" \
  >"$OUT/call1-tests.log" 2>&1
echo "tests exit $?"
tail -25 "$OUT/call1-tests.log"
date -u
BUDGET=${BUDGET:-330} HARD_LIMIT=${HARD_LIMIT:-370} AMPS=bf16 CORE=compile,dpcompile POLICIES=auto \
  PEERS=opacus_oop,fastdp,private_vision NAME=s28-timm bash benchmarks/suite_gpu.sh timm_vit_s16_224 2>&1 | tail -40
date -u
