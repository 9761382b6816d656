#!/usr/bin/env bash
# Fiftieth session, call 2 (call 1 was s49/s50_call1.sh: its clipped_sums.py lines were lost behind the suite's long
# output lines, and the new channels-last test failed on its own recorder: the op's CUDA implementation also
# launches through launch(), recorded as an inductor launch). (0) that test as fixed; (1) clipped_sums.py with the
# batch static and a Triton kernel of our own added, B = 32 (six layers) and B = 256 (three), to $OUT. Predicted:
# the plain sum and the GEMV near 2 TB/s; weighted_sum with the batch dynamic well below (s49: about 0.4 TB/s in the
# step); static batch near the plain sum. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s50/call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s50-call2
LIMIT=420
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_conv_kernels.py" "channels_last" 1 90
timeout 120 python3 benchmarks/results/2026-12-06-s49/clipped_sums.py --batch 32 >"$OUT/clipped_sums-b32.jsonl" 2>"$OUT/clipped_sums-b32.err"
tail -3 "$OUT/clipped_sums-b32.err"; cat "$OUT/clipped_sums-b32.jsonl"
timeout 120 python3 benchmarks/results/2026-12-06-s49/clipped_sums.py --batch 256 --layers 3 >"$OUT/clipped_sums-b256.jsonl" 2>"$OUT/clipped_sums-b256.err"
tail -3 "$OUT/clipped_sums-b256.err"; cat "$OUT/clipped_sums-b256.jsonl"
date -u
