#!/usr/bin/env bash
# Session 16, call 1: the batch-of-one fix on CUDA (diag + the tests that fell back), a kernel profile of ResNet-18 32².
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u; git log --oneline -1 2>/dev/null
timeout 150 python3 .gpu/diag_b1.py > $OUT/diag_b1.txt 2>&1
grep -v Warning $OUT/diag_b1.txt | grep -v "^ " | head -20 | cut -c1-300
TESTS="tests/test_precision.py tests/test_norm_bounds.py tests/test_mixed_precision.py" WORKERS=14 TEST_TIMEOUT=250 LIMIT=260 bash .ci/gpu inductor | tail -15
grep -c "runs without inductor" $OUT/tests-inductor.log; grep "runs without inductor" $OUT/tests-inductor.log | head -3 | cut -c1-300
date -u
for m in compile dp; do
  timeout 110 python3 benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --method $m --policy auto --steps 10 --profile > $OUT/prof-r18-$m.txt 2>&1
  grep -v Warning $OUT/prof-r18-$m.txt | head -32 | cut -c1-200; tail -1 $OUT/prof-r18-$m.txt | cut -c1-400
done
date -u
