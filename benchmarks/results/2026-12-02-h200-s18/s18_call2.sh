#!/usr/bin/env bash
# Session 18, call 2: the prelu float64 error on CUDA (diag); ghost_tf32 (ghost terms' clipped sums as TF32
# products) timed on ResNet-18 32² against the same call's compiled non-private step, and its over-clipping measured.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
DPCOMPILE_TEST_DEVICE=cuda timeout 100 python3 .gpu/diag_prelu.py 2>&1 | grep -v Warn | head -60
date -u
for v in "compile" "dp --ghost-tf32" "dp --cuda-graphs --per-sample-tf32 --ghost-tf32" "dp --cuda-graphs --per-sample-tf32"; do
  f="$OUT/r18-${v// /_}.txt"
  timeout 100 python3 benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --method $v --policy auto --steps 20 > "$f" 2>&1
  echo "$v: rc=$? $(tail -1 "$f" | cut -c1-330)"
done
date -u
timeout 170 python3 benchmarks/tf32_overclip.py --model resnet18_gn --batch 256 --samples 48 --policy auto > $OUT/overclip-r18.txt 2>&1
echo "overclip rc=$?"; tail -1 $OUT/overclip-r18.txt | cut -c1-1500
date -u
