#!/usr/bin/env bash
# Session 19, call 1: the eighteenth session's commits after its calls on CUDA (test_precision.py through inductor),
# then ResNet-50 (GN) 224² b32 fp32: non-private compile, dpcompile auto and the peers in one suite run.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u; git log --oneline -1 2>/dev/null
TESTS="tests/test_precision.py" WORKERS=12 LIMIT=150 TEST_TIMEOUT=140 bash .ci/gpu inductor | tail -15
date -u
BUDGET=320 HARD_LIMIT=360 AMPS=fp32 CORE=compile,dpcompile POLICIES=auto NAME=s19-r50 bash benchmarks/suite_gpu.sh resnet50_224 2>&1 | tail -25
date -u
