#!/usr/bin/env bash
# Session 18, call 1: ResNet-18 32² auto profiled (plain and TF32 per-sample products): the products list splits the
# IEEE products; then bc8e4fa (conv Gram/unfolded products as bmm) through inductor on CUDA.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u; git log --oneline -1 2>/dev/null
for v in "dp --profile" "dp --per-sample-tf32 --profile"; do
  f="$OUT/r18-${v// /_}.txt"
  timeout 115 python3 benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --method $v --policy auto --steps 20 > "$f" 2>&1
  echo "$v: rc=$? $(tail -1 "$f" | cut -c1-300)"
done
date -u
TESTS="tests/test_core.py tests/test_norm_bounds.py tests/test_models.py" WORKERS=14 LIMIT=320 TEST_TIMEOUT=250 bash .ci/gpu inductor | tail -25
date -u
