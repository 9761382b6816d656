#!/usr/bin/env bash
# Session 32, call 1: (a) the CUDA tests through inductor under the thirty-first session's defaults (channels-last
# forward, stacked group sums, stored clip factors), fp32 (bf16 autocast in a later call); (b) cuda_graphs=True on
# the committed code, WRN-16-4 32² b256 auto, against non-private compile in its default mode and reduce-overhead,
# in the same call: whether the wall clock then follows the device time (predicted 9.5-10 ms, about 1.3x).
cd "$(dirname "$0")/../../.."
PREFIX=s32-call1
LIMIT=560
source benchmarks/device_call.sh
date -u; nvidia-smi --query-gpu=name --format=csv,noheader; python3 -c 'import torch; print(torch.__version__)'
echo "== tests $(date -u +%T)"
TESTS="tests/test_core.py tests/test_norm_bounds.py tests/test_models.py tests/test_precision.py" \
    PYTEST_ADDOPTS="-k 'not bf16_autocast'" WORKERS=14 TEST_TIMEOUT=280 LIMIT=300 OUT=$OUT/tests \
    bash .ci/gpu inductor 2>&1 | tail -40
TP="python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 30 --policy auto"
run "dp graphs" 110 $TP --cuda-graphs
run "compile" 50 $TP --method compile
run "compile graphs" 60 $TP --method compile --cuda-graphs
run "dp" 90 $TP
date -u
