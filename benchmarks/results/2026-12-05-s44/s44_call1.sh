#!/usr/bin/env bash
# Written in session 44 (no device: 171 s of device time left) for the next device call, before s43_call1.sh:
# (1) the step guard's tests of session 43 on CUDA (they ran on the CPU only, under torch 2.13 and 2.11);
# (2) where ResNet-50 (GN) 224² b32's first step goes on the GPU host, inductor's phases of each lowering included
#     (pass_times.py --phases): whether the DP backward's 81 s are the nodes' Python work (fake propagation, lowering
#     to IR, fusion, code generation), the Triton compiles (waiting for the workers) or autotuning, which decides
#     what to cut for issue 10's 60-s target. Cold cache (a fresh directory), then warm (the same directory).
# Run alone: bash benchmarks/results/2026-12-05-s44/s44_call1.sh (carry [".whl"]).
cd "$(dirname "$0")/../../.."
PREFIX=s44-call1
LIMIT=560
source benchmarks/device_call.sh
date -u
gpu_tests tests/test_adversarial.py "before_its_capture or loose_parameter or reaches or moved_into or half_made or dead_weak or named_like" 8 150
phases="python3 benchmarks/pass_times.py --models resnet50_gn --size 224 --batch 32 --device cuda --backend inductor --clock wall --snippets 4 --phases"
TORCHINDUCTOR_CACHE_DIR=/tmp/s44-cold run r50_phases_cold 240 $phases
TORCHINDUCTOR_CACHE_DIR=/tmp/s44-cold run r50_phases_warm 120 $phases
tail -8 "$OUT"/$PREFIX-r50_phases_*.log
date -u
