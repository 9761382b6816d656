#!/usr/bin/env bash
# Session 32, call 3: the clipped sum's GEMM on patch_rows' operands (kernel-major, channel-minor rows, read along
# channels-last x's C): (a) rows_gemm.py, that GEMM alone against the form it replaced, compiled, channels-last and
# contiguous, fp32 and TF32, three layer sizes of WRN-16-4; (b) WRN-16-4 and ResNet-18 (GN) 32² b256 auto
# profiled (device time per step; call 4 of the thirty-first session: 8.86 and, before stored clip factors, 10.92
# ms); (c) the convolution tests through inductor on CUDA (the path runs on CUDA only, and on the CPU under TF32).
cd "$(dirname "$0")/../../.."
PREFIX=s32-call3
LIMIT=540
source benchmarks/device_call.sh
date -u
export TORCHINDUCTOR_FX_GRAPH_CACHE=0
run "rows gemm" 150 python3 benchmarks/results/2026-12-04-h200-s32/rows_gemm.py
TP="python3 benchmarks/dp_throughput.py --size 32 --batch 256 --steps 20 --policy auto --profile"
mark
run "dp wrn" 100 $TP --model wrn16_4
keep rows
echo "== tests $(date -u +%T)"
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor timeout -s INT -k 5 150 python3 -m pytest -q -n 14 \
    -p no:cacheprovider tests/test_models.py tests/test_norm_bounds.py tests/test_core.py -k "conv or wrn or resnet" \
    2>&1 | tail -15 | tee "$OUT/s32-call3-tests.log"
run "dp r18" 110 $TP --model resnet18_gn
date -u
