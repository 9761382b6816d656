#!/usr/bin/env bash
# Forty-ninth session, first call: CUDA tests of what has not run there (the bucket test fixed after s48 call 1; the
# empty-batch and bucket paths unified in DPModel._padded, 7e0bdac; the per-sample kernel's joint tiles), then the
# per-sample convolution kernel layer by layer at the suite's shapes (per_sample_224.py; the few-channel shapes first,
# where the joint tiles are timed against the per-position tiles). Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s49/s49_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s49-call1
LIMIT=560
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_buckets.py tests/test_core.py tests/test_augmult.py tests/test_sampling.py tests/test_user_errors.py" \
    "empty or mean_loss or bucket" 8 130
gpu_tests "tests/test_conv_kernels.py" "random_convolutions or rewrite_through" 8 140
timeout $(( $(left) - 15 )) python3 benchmarks/results/2026-12-06-s49/per_sample_224.py \
    > "$OUT/per_sample_224.jsonl" 2>"$OUT/per_sample_224.err"
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["shape"], "|", r["layout"], "| best", r["best_ms"], r["best_config"], "| floor", r["cudnn_batched_wgrad_ms"],
          "| x", r["ratio_to_floor"], "|", r["tflops"], "TFLOP/s | err", "%.1e" % r["rel_err"])' "$OUT/per_sample_224.jsonl"
tail -3 "$OUT/per_sample_224.err"
date -u
