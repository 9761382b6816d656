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
tail -3 "$OUT/grouped_wgrad.err"
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["dtype"], r["shape"], "cudnn", r.get("cudnn_wgrad_ms"), r.get("current"), r.get("current_ms"),
          "triton_tf32", r.get("triton_tf32_ms"), "grouped", r.get("grouped_from_cl_ms"), r.get("grouped_ms"), "err",
          r.get("current_rel_err"), r.get("triton_tf32_rel_err"), r.get("grouped_rel_err"),
          r.get("current_error", ""), r.get("triton_tf32_error", ""), r.get("grouped_error", ""))' "$OUT/grouped_wgrad.jsonl"
gpu_tests tests/test_core.py "stay_as_made or explain_and_graphs or inductor_matches or caches_never_reuse" 4 110
date -u
