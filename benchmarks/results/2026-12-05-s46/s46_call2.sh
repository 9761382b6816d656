#!/usr/bin/env bash
# Written in session 46: ResNet-50 (GN) 224² b32's first step by phase with the constant parts gone (the forty-sixth
# session's census: 13% fewer launches in its DP backward), cold cache; then, from the same cache, the DP backward's
# generated calls by stage on CUDA (kernels_by_stage.py: inductor's "Topologically Sorted Source Nodes" comments),
# to hold against the CPU census (triton_census.py); then WRN-16-4's. Run alone, carry .whl.
cd "$(dirname "$0")/../../.."
PREFIX=s46-call2
LIMIT=540
source benchmarks/device_call.sh
date -u
phases="python3 benchmarks/pass_times.py --size 224 --device cuda --backend inductor --clock wall --phases --nodes"
TORCHINDUCTOR_CACHE_DIR=/tmp/s46-r50 run r50_phases 200 $phases --models resnet50_gn --batch 32
tail -n 5 "$OUT"/$PREFIX-r50_phases.log
k=benchmarks/results/2026-12-05-s46/kernels_by_stage.py
TORCHINDUCTOR_CACHE_DIR=/tmp/s46-r50 run r50_kernels 120 python3 $k resnet50_gn 224 32 cuda "$OUT"
tail -n 12 "$OUT"/$PREFIX-r50_kernels.log
TORCHINDUCTOR_CACHE_DIR=/tmp/s46-wrn run wrn_kernels 120 python3 $k wrn16_4 32 256 cuda "$OUT"
tail -n 12 "$OUT"/$PREFIX-wrn_kernels.log
date -u
