#!/usr/bin/env bash
# Session 17, call 2: the CUDA error of call 1 (test_empty_batch_takes_noise_only_step, a teardown error: the
# guard check), the 11 tests call 1's limit cut, ResNet-18 32² with cuda_graphs + TF32 per-sample products.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u; git log --oneline -1 2>/dev/null
for b in eager inductor; do
  DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=$b TORCH_LOGS=dynamic timeout 120 python3 -m pytest -q -p no:cacheprovider \
    --tb=long tests/test_core.py -k test_empty_batch_takes_noise_only_step > $OUT/empty-$b.txt 2>&1
  echo "empty batch, $b: rc=$?"; grep -i "assert\|added guards\|passed\|failed\|error" $OUT/empty-$b.txt | grep -v Warn | head -8 | cut -c1-400
  grep -i "guard added\|eval .* \[guard" $OUT/empty-$b.txt | head -20 | cut -c1-400
done
date -u
TESTS="$(cat .gpu/s17_rest.txt | tr '\n' ' ')" WORKERS=11 TEST_TIMEOUT=200 LIMIT=200 bash .ci/gpu inductor | tail -15
date -u
for v in "compile" "dp" "dp --cuda-graphs --per-sample-tf32" "dp --cuda-graphs"; do
  timeout 120 python3 benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --method $v --policy auto --steps 20 > "$OUT/r18-${v// /_}.txt" 2>&1
  echo "$v: $(tail -1 "$OUT/r18-${v// /_}.txt" | cut -c1-400)"
done
date -u
