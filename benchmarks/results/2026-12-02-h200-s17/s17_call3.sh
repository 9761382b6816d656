#!/usr/bin/env bash
# Session 17, call 3: the CUDA clipped sum's GEMM without einsum (no B = 1 question) on CUDA: the empty-batch test of
# call 2, the first-batch-of-one test (now on the device under test), the conv tests through inductor; ResNet-18 32²
# re-timed (its clipped sums are this GEMM).
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=eager timeout 100 python3 -m pytest -q -p no:cacheprovider --tb=short \
  tests/test_core.py -k test_empty_batch_takes_noise_only_step > $OUT/empty-eager.txt 2>&1; echo "empty batch eager rc=$?"; tail -1 $OUT/empty-eager.txt
TESTS="$(tr "\n" " " < .gpu/s17_call3_tests.txt)" WORKERS=14 TEST_TIMEOUT=190 LIMIT=200 bash .ci/gpu inductor | tail -12
date -u
for v in "compile" "dp"; do
  timeout 75 python3 benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --method $v --policy auto --steps 20 > "$OUT/r18-$v.txt" 2>&1
  echo "$v: $(tail -1 "$OUT/r18-$v.txt" | cut -c1-400)"
done
date -u
