#!/usr/bin/env bash
# Session 33, call 1: (a) the CUDA tests of the thirty-second session's changes not yet run there (transposed
# convolutions past their stride, the refusals, the random-convolution property tests, bf16 autocast through the
# patch-rows clipped sum), through inductor; (b) cuda_graphs=True on the committed code (patch rows), WRN-16-4 and
# 32² b256 auto (ResNet-18 left for time), against non-private compile in its default mode and with CUDA graphs, in one call
# (predicted WRN-16-4 about 9.6 ms, 1.50x of reduce-overhead).
cd "$(dirname "$0")/../../.."
PREFIX=s33-call1
LIMIT=480
source benchmarks/device_call.sh
date -u; nvidia-smi --query-gpu=name --format=csv,noheader; python3 -c 'import torch; print(torch.__version__)'
echo "== tests $(date -u +%T)"
TESTS="tests/test_refusals.py tests/test_core.py tests/test_properties.py tests/test_adversarial.py tests/test_models.py" \
    PYTEST_ADDOPTS="-k 'transposed or refus or random_convolutions or dropped_sample or bf16_autocast_conv or (bf16 and (wrn or resnet or conv))'" \
    WORKERS=14 TEST_TIMEOUT=200 LIMIT=230 OUT=$OUT/tests bash .ci/gpu inductor 2>&1 | tail -30
for m in wrn16_4; do
    TP="python3 benchmarks/dp_throughput.py --model $m --size 32 --batch 256 --steps 30 --policy auto"
    run "$m dp graphs" 100 $TP --cuda-graphs
    run "$m compile" 45 $TP --method compile
    run "$m compile graphs" 55 $TP --method compile --cuda-graphs
done
date -u
