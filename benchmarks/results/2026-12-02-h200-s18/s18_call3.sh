#!/usr/bin/env bash
# Session 18, call 3: ghost_tf32 in one call against its IEEE twin and the compiled non-private step (ResNet-18 32²),
# then tests/test_precision.py on CUDA through inductor (the TF32 tests, ghost ones new).
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
for m in resnet18_gn; do
  for v in "compile" "dp" "dp --ghost-tf32"; do
    f="$OUT/$m-${v// /_}.txt"
    timeout 95 python3 benchmarks/dp_throughput.py --model $m --size 32 --batch 256 --method $v --policy auto --steps 20 > "$f" 2>&1
    echo "$m $v: rc=$? $(tail -1 "$f" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print(r["step_ms"], r["host_ms"])' 2>&1 | tail -1)"
  done
  date -u
done
TESTS="tests/test_precision.py" WORKERS=12 LIMIT=170 TEST_TIMEOUT=160 bash .ci/gpu inductor | tail -12
date -u
