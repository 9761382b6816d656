#!/usr/bin/env bash
# Session 16, call 3: the torchvision/timm configs, fp32, core methods (eager, compile, dpcompile auto).
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels; python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
BUDGET=440 HARD_LIMIT=480 AMPS=fp32 PEERS= POLICIES=auto NAME=s16-tv bash benchmarks/suite_gpu.sh tv_resnet50_224 timm_vit_s16_224 tv_resnet18_32 tv_resnet18_224 2>&1 | tail -30
date -u
