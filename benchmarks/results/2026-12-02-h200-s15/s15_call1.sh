#!/usr/bin/env bash
# Session 15, call 1: the committed shifted form on CUDA (tests, fp32 and its new bf16 tests), then WRN-16-4 in bf16
# autocast: compiled non-private vs dpcompile auto (shifted, and unfold) time, and peak memory.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
TESTS="tests/test_norm_bounds.py tests/test_core.py tests/test_models.py tests/test_precision.py tests/test_mixed_precision.py tests/test_adversarial.py::test_bf16_autocast_conv tests/test_adversarial.py::test_bf16_autocast" \
  WORKERS=14 TEST_TIMEOUT=300 LIMIT=290 PYTEST_ADDOPTS="-k 'not test_model_under_bf16_autocast'" bash .ci/gpu inductor 2>&1 | tail -30
echo "fallbacks: $(grep -c 'runs without inductor' $OUT/tests-inductor.log)"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
common="--configs wrn16_4_32 --amp bf16 --no-explain --cudnn-benchmark --out $OUT --steps 20"
timeout -s INT 100 python3 benchmarks/bench.py $common --methods compile,dpcompile --policies auto --name s15-wrn-bf16 2>&1 | tail -4
timeout -s INT 70 python3 benchmarks/with_plan.py SHIFTED_CONV_MAX_PRODUCTS=0 -- benchmarks/bench.py $common --methods dpcompile --policies auto --name s15-wrn-bf16-unfold 2>&1 | tail -3
for m in compile dp; do
  timeout 45 python3 benchmarks/peak_memory.py --model wrn16_4 --size 32 --batch 256 --method $m --amp bf16 --top 4 2>&1 | grep '^{' | tee -a $OUT/mem.jsonl | cut -c1-300
done
