#!/usr/bin/env bash
# Session 17, call 1: the sixteenth session's changes (snippet traces without the fake cache, the embedding's
# 2-D indices, the conftest guard check) on CUDA through inductor; the DP passes' time on the GPU host.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u; git log --oneline -1 2>/dev/null
TESTS="tests/test_core.py tests/test_tied.py tests/test_models.py tests/test_norm_bounds.py" WORKERS=14 TEST_TIMEOUT=300 LIMIT=360 bash .ci/gpu inductor | tail -25
grep -c "runs without inductor" $OUT/tests-inductor.log; grep -i "added guards\|runs without inductor" $OUT/tests-inductor.log | head -5 | cut -c1-300
date -u
timeout 120 python3 benchmarks/pass_times.py --models resnet50_gn,wrn16_4,vit_s16 > $OUT/pass_times.txt 2>&1
grep -v Warning $OUT/pass_times.txt | tail -12 | cut -c1-250
date -u
