#!/usr/bin/env bash
# Session 21, call 2: on CUDA through inductor, the TF32 Gram norms (ghost_tf32) and the two test fixes (a Dynamo
# capture failure named as a DPCompileError; the kwargs test's batch-of-one recompile); ViT-S/16 fp32 with both TF32
# options against compile (the TF32 Grams' gain); what ghost_tf32 now costs ViT-S/16 in clipping (H200's plan).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="tests/test_precision.py tests/test_norm_bounds.py tests/test_adversarial.py::test_partial_write_along_the_batch_refused tests/test_adversarial.py::test_keyword_and_nested_calls_compile_once_and_match_the_reference" \
  PYTEST_ADDOPTS='-k "tf32 or partial_write or keyword_and_nested or crafted"' WORKERS=14 LIMIT=170 TEST_TIMEOUT=160 \
  bash .ci/gpu inductor | tail -25
cp "$OUT/tests-inductor.log" "$OUT/tests-tf32-grams.log" 2>/dev/null
date -u
BUDGET=150 HARD_LIMIT=170 AMPS=fp32 CORE=compile,dp_auto_alltf32 PEERS= POLICIES=auto \
  NAME=s21-vit-tf32grams bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -4
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
left=$((585 - SECONDS))
timeout $left python3 benchmarks/tf32_overclip.py --model vit_s16 --size 224 --batch 64 --samples 8 \
  > "$OUT/vit-overclip.json" 2> "$OUT/vit-overclip.err"; tail -c 1500 "$OUT/vit-overclip.json"; tail -2 "$OUT/vit-overclip.err"
date -u
