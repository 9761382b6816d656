#!/usr/bin/env bash
# Session 32, call 2: (a) the bf16-autocast CUDA tests through inductor under the new defaults; (b) ResNet-18 (GN)
# 32² b256 auto with cuda_graphs=True against non-private compile in both modes, in the same call.
cd "$(dirname "$0")/../../.."
PREFIX=s32-call2
LIMIT=420
source benchmarks/device_call.sh
echo "== tests $(date -u +%T)"
TESTS="tests/test_core.py tests/test_norm_bounds.py tests/test_models.py tests/test_precision.py" \
    PYTEST_ADDOPTS="-k bf16_autocast" WORKERS=14 TEST_TIMEOUT=200 LIMIT=200 OUT=$OUT/tests \
    bash .ci/gpu inductor 2>&1 | tail -25
TP="python3 benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --steps 30 --policy auto"
run "dp graphs" 120 $TP --cuda-graphs
run "compile" 50 $TP --method compile
run "compile graphs" 60 $TP --method compile --cuda-graphs
date -u
