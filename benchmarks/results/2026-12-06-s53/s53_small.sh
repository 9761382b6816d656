#!/usr/bin/env bash
# Fifty-third session, the one call a short device budget allows (most starts were refused): the grouped per-sample
# convolution gradients' layer table (s52/grouped_wgrad.py, as s53_call1.sh's first half), then this session's
# inductor-lowers-a-copy test and its neighbours on CUDA. Run alone, carry .whl:
#   LIMIT=360 bash benchmarks/results/2026-12-06-s53/s53_small.sh
cd "$(dirname "$0")/../../.."
PREFIX=s53-small
LIMIT=${LIMIT:-360}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
timeout $((LIMIT - 130)) python3 benchmarks/results/2026-12-06-s52/grouped_wgrad.py >"$OUT/grouped_wgrad.jsonl" 2>"$OUT/grouped_wgrad.err"
grep "^row:" "$OUT/grouped_wgrad.err"; grep -v "^row:" "$OUT/grouped_wgrad.err" | tail -3
gpu_tests tests/test_core.py "stay_as_made or explain_and_graphs or inductor_matches or caches_never_reuse" 4 110
date -u
