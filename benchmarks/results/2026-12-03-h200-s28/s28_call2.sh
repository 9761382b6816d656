#!/usr/bin/env bash
# Session 28, call 2: the largest batch that fits, non-private torch.compile against dpcompile auto, on the CIFAR
# configs in fp32 (ResNet-18 (GN) 32² and WRN-16-4 32²); each search stops within 10%.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
BUDGET=${BUDGET:-540} HARD_LIMIT=${HARD_LIMIT:-570} AMPS=fp32 CORE= PEERS= POLICIES=auto LARGEST=compile,dp_auto \
  LARGEST_SECONDS=${LARGEST_SECONDS:-120} NAME=s28-largest bash benchmarks/suite_gpu.sh ${CONFIGS:-resnet18_32 wrn16_4_32} 2>&1 | tail -40
date -u
