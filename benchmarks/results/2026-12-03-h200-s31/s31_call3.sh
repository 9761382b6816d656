#!/usr/bin/env bash
# Session 31, call 3, WRN-16-4 32² b256 auto, profiled, with the group sums as stacked reductions (the chain of
# additions had fused every 8×8 ghost layer's Gram sums into one 0.79 ms kernel): (a) as committed; (b) with
# backend.STATIC_BATCH_LAYOUT on (flags.py), whether cuDNN's NCHW↔NHWC conversions (0.96 ms a step in calls 1-2,
# absent from the thirtieth session's profile) go; (c) non-private compile; (d) the layout test through inductor
# on CUDA (both settings, three batch sizes against the reference: the new sums and the switch); (e) ResNet-18 (GN)
# the same way, as time allows.
cd "$(dirname "$0")/../../.."
PREFIX=s31-call3
source benchmarks/device_call.sh
date -u
TP="benchmarks/dp_throughput.py --size 32 --batch 256 --steps 20 --policy auto"
F=benchmarks/results/2026-12-03-h200-s31/flags.py
LAYOUT="dpcompile.backend.STATIC_BATCH_LAYOUT=True"
mark
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-a TORCHINDUCTOR_FX_GRAPH_CACHE=0
run "dp wrn" 100 python3 $TP --model wrn16_4 --profile
keep sums
run "compile wrn" 45 python3 $TP --model wrn16_4 --method compile
run "dp layout wrn" 100 python3 $F $LAYOUT -- $TP --model wrn16_4 --profile
echo "== tests $(date -u +%T)"
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor timeout -k 5 140 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_gpu_paths.py -k "layout_of_a_static" 2>&1 | tail -4 | tee "$OUT/s31-call3-tests.log"
run "compile r18" 60 python3 $TP --model resnet18_gn --method compile
run "dp r18" 120 python3 $TP --model resnet18_gn --profile
run "dp layout r18" 120 python3 $F $LAYOUT -- $TP --model resnet18_gn --profile
date -u
