#!/usr/bin/env bash
# Session 31, call 4 (the session's last device seconds): the committed defaults after call 3, WRN-16-4 32² b256
# auto profiled: STATIC_BATCH_LAYOUT on, the group sums as stacked reductions, and each clip factor stored once
# (call 3: inlined into the clipped sums' unfold kernels, 0.42 ms a step); non-private compile in the same call;
# the layout test through inductor on CUDA (the reference at three batch sizes, both switch settings).
cd "$(dirname "$0")/../../.."
PREFIX=s31-call4
source benchmarks/device_call.sh
date -u
TP="benchmarks/dp_throughput.py --size 32 --batch 256 --steps 20 --policy auto"
mark
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-a TORCHINDUCTOR_FX_GRAPH_CACHE=0
run "dp wrn" 100 python3 $TP --model wrn16_4 --profile
run "compile wrn" 45 python3 $TP --model wrn16_4 --method compile
echo "== tests $(date -u +%T)"
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor timeout -k 5 70 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_gpu_paths.py -k "layout_of_a_static" 2>&1 | tail -4 | tee "$OUT/s31-call4-tests.log"
date -u
