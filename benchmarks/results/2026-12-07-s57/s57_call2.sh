#!/usr/bin/env bash
# Fifty-seventh session: the DP passes' time on the GPU machine's host with the snippet traces recorded by
# passes.emit.record (lean) against make_fx alone (make_fx), alternating, ResNet-50 (GN) 224² b32, eager lowering
# (the passes alone, process time); then record's tests on CUDA. Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s57/s57_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s57-call2
LIMIT=${LIMIT:-420}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
for mode in lean make_fx lean make_fx; do
    (( $(left) > 90 )) || break
    timeout 110 python3 benchmarks/results/2026-12-07-s57/passes_ab.py $mode --models resnet50_gn --size 224 \
        --batch 32 --device cuda --snippets 2 2>&1 | grep -v Warn | tail -5 | tee -a "$OUT/$PREFIX-passes.log"
done
(( $(left) > 40 )) && gpu_tests "tests/test_norm_bounds.py" "record_ or emit_leaves" 4 $(left)
date -u
