#!/usr/bin/env bash
# Written in session 45 for the next device call: (1) the two tests fixed after the forty-fifth session's CUDA suite
# (the half Grams' test with the fused form off; the FX-cache test in four processes), the no-op test and the
# strided-rows guard test (token, position embedding, layer scale); (2) ResNet-50 (GN) 224² b32
# and ViT-S/16 224² b64 first steps with the DP backward's nodes by stage and the Triton kernels inductor generates
# per graph (pass_times.py --nodes; the forty-fifth session found 88% of the DP backward's lowering to be Python in
# inductor's main process, and the per-kernel phases 39.5 of its 72 s): which stage makes the kernels decides the
# first step's lever. Cold cache each. Run alone: bash benchmarks/results/2026-12-05-s45/s45_call1.sh (carry .whl).
cd "$(dirname "$0")/../../.."
PREFIX=s45-call1
LIMIT=560
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_norm_bounds.py tests/test_core.py" "half_grams_stay or second_run_finds or leaves_out_ops or strided_rows" 4 200
phases="python3 benchmarks/pass_times.py --size 224 --device cuda --backend inductor --clock wall --phases --nodes"
TORCHINDUCTOR_CACHE_DIR=/tmp/s45-r50 run r50_nodes 200 $phases --models resnet50_gn --batch 32
TORCHINDUCTOR_CACHE_DIR=/tmp/s45-vit run vit_nodes 150 $phases --models vit_s16 --batch 64
tail -n 4 "$OUT"/$PREFIX-r50_nodes.log "$OUT"/$PREFIX-vit_nodes.log
date -u
