#!/usr/bin/env bash
# Session 31, call 1: (a) which DP nodes the two large generated kernels of WRN-16-4's step compute (the thirtieth
# session's 0.79 ms and 0.69 ms kernels), now that the emitted nodes carry inductor's provenance: dp_throughput
# --profile with the FX graph cache off (a cached module keeps its old names); (b) the provenance and layout tests
# on CUDA through inductor (neither has run on CUDA); (c) ResNet-18 (GN) 32² profiled the same way.
cd "$(dirname "$0")/../../.."
PREFIX=s31-call1
source benchmarks/device_call.sh
export TORCHINDUCTOR_FX_GRAPH_CACHE=0
date -u; nvidia-smi --query-gpu=name --format=csv,noheader; python3 -c 'import torch; print(torch.__version__)'
TP="python3 benchmarks/dp_throughput.py --size 32 --batch 256 --steps 20 --policy auto --profile"
run "dp wrn16_4" 130 $TP --model wrn16_4
run "compile wrn16_4" 50 $TP --model wrn16_4 --method compile
echo "== tests $(date -u +%T)"
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor timeout -k 5 150 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_gpu_paths.py tests/test_benchmarks.py -k "layout_of_a_static or profiled_kernels" 2>&1 | tail -25 | tee "$OUT/s31-call1-tests.log"
run "dp resnet18" 150 $TP --model resnet18
date -u
