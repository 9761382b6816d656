#!/usr/bin/env bash
# Fiftieth session, call 3: clipped_step.py (the clipped sums inside a DP step at ResNet-50 layer3's shapes), inductor's
# loop ordering after fusion on (the default) and off, the backward's generated code kept. Predicted: with it on, the
# clipped sums' kernel reads the stored per-sample gradients out of order (the release's contiguous order), about
# 0.5 ms a step for six layers; off, near clipped_sums.py's 0.21 ms. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s50/call3.sh
cd "$(dirname "$0")/../../.."
PREFIX=s50-call3
LIMIT=300
source benchmarks/device_call.sh
date -u
for loaf in 1 0; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-step-$loaf timeout 130 python3 benchmarks/results/2026-12-06-s50/clipped_step.py --loaf $loaf \
        --code "$OUT/clipped_step-loaf$loaf.py" >"$OUT/clipped_step-loaf$loaf.json" 2>"$OUT/clipped_step-loaf$loaf.err"
    tail -3 "$OUT/clipped_step-loaf$loaf.err"; cat "$OUT/clipped_step-loaf$loaf.json"
done
gzip "$OUT"/clipped_step-loaf*.py
date -u
