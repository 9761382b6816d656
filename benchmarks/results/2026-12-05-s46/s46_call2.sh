#!/usr/bin/env bash
# Written in session 46: ResNet-50 (GN) 224² b32's and WRN-16-4 32² b256's DP backward, its generated calls (Triton
# kernels and extern calls) by stage on CUDA (kernels_by_stage.py: the stage most of a call's source nodes belong
# to, read from inductor's "Topologically Sorted Source Nodes" comments, which the CPU wrapper writes for extern
# calls only). The forty-sixth session found the first step set by the 892 kernels' code generation, not the nodes:
# which stage makes them decides what to fuse next. Cold cache each. Run alone, carry .whl.
cd "$(dirname "$0")/../../.."
PREFIX=s46-call2
LIMIT=480
source benchmarks/device_call.sh
date -u
k=benchmarks/results/2026-12-05-s46/kernels_by_stage.py
TORCHINDUCTOR_CACHE_DIR=/tmp/s46-r50 run r50_kernels 220 python3 $k resnet50_gn 224 32 cuda "$OUT"
tail -n 12 "$OUT"/$PREFIX-r50_kernels.log
TORCHINDUCTOR_CACHE_DIR=/tmp/s46-wrn run wrn_kernels 120 python3 $k wrn16_4 32 256 cuda "$OUT"
tail -n 12 "$OUT"/$PREFIX-wrn_kernels.log
date -u
