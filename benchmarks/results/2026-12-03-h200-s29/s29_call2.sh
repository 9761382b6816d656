#!/usr/bin/env bash
# Session 29, call 2: the TF32 default (c6edc1f) timed against the former default (dp_auto_ieee: every DP product
# IEEE) and non-private torch.compile in the same run: the suite's fp32 convolution configs ResNet-18 (GN) 32²,
# WRN-16-4 32², ResNet-18 (GN) 224².
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
BUDGET=${BUDGET:-530} HARD_LIMIT=${HARD_LIMIT:-565} AMPS=fp32 CORE=compile,dpcompile,dp_auto_ieee POLICIES=auto PEERS= \
  NAME=s29-tf32default bash benchmarks/suite_gpu.sh ${CONFIGS:-cifar resnet18_224} 2>&1 | tail -40
date -u
