#!/usr/bin/env bash
# Session 28, call 3: the largest batch that fits, non-private torch.compile against dpcompile auto, on the ImageNet-size
# configs in fp32 (ResNet-18 (GN) 224² b64 and ResNet-50 (GN) 224² b32); each search stops within 10%.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
BUDGET=${BUDGET:-540} HARD_LIMIT=${HARD_LIMIT:-570} AMPS=fp32 CORE= PEERS= POLICIES=auto LARGEST=compile,dp_auto \
  LARGEST_SECONDS=${LARGEST_SECONDS:-150} NAME=s28-largest224 bash benchmarks/suite_gpu.sh ${CONFIGS:-resnet18_224 resnet50_224} 2>&1 | tail -40
date -u
