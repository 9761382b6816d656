#!/usr/bin/env bash
# Session 16, call 4: torchvision ResNet-18 (GN) 224², fp32, compile and dpcompile auto (eager left out: budget).
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels; python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
BUDGET=165 HARD_LIMIT=185 AMPS=fp32 CORE=compile,dpcompile PEERS= POLICIES=auto NAME=s16-tv18 bash benchmarks/suite_gpu.sh tv_resnet18_224 2>&1 | tail -12
date -u
