#!/usr/bin/env bash
# Session 21, call 1: the underflow fix (certified norms [s, e, a]) on CUDA through inductor: the adversarial and
# norm-bound tests (the 1 × 1 convolution's underflow case reaches cuBLAS's GEMM here, not oneDNN's flush); the
# Gram products' TF32 rates (split TF32 for ghost norms); what `ghost_tf32` costs ViT-S/16 in clipping under the
# H200's own plan; ViT-S/16 fp32 with both TF32 options against compile while time lasts (the fix's cost).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="tests/test_adversarial.py tests/test_norm_bounds.py" WORKERS=14 LIMIT=250 TEST_TIMEOUT=240 \
  bash .ci/gpu inductor | tail -30
cp "$OUT/tests-inductor.log" "$OUT/tests-adversarial-bounds.log" 2>/dev/null
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
timeout 60 python3 benchmarks/tf32_products.py --grams --out "$OUT/gram-rates.json" 2>&1 | tail -8
date -u
timeout 170 python3 benchmarks/tf32_overclip.py --model vit_s16 --size 224 --batch 64 --samples 16 \
  > "$OUT/vit-overclip.json" 2> "$OUT/vit-overclip.err"; tail -c 1500 "$OUT/vit-overclip.json"; tail -3 "$OUT/vit-overclip.err"
date -u
left=$((575 - SECONDS))
(( left > 150 )) && BUDGET=$((left - 20)) HARD_LIMIT=$left AMPS=fp32 CORE=compile,dp_auto_alltf32 PEERS= POLICIES=auto \
  NAME=s21-vit-tf32 bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -8
date -u
