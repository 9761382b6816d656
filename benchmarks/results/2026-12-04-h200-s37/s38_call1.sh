#!/usr/bin/env bash
# Written in session 37 for the next session's first device call (not run yet). (1) The C++ wrapper: session 37's
# call 3 found WRN-16-4 bf16's DP backward failing to compile under cpp_wrapper=True (CppCompileError) and running
# uncompiled, 104 ms a step; found by reading inductor: its cuBLAS choice for aten.bmm.dtype (the half Grams'
# lowering) has a C-shim name torch lacks. Now the half Grams stay the op under the C++ wrapper, and any graph the
# C++ wrapper fails on is compiled again with the Python wrapper (warning). The CUDA tests (half Grams under the C++
# wrapper: no warning; padded Gram rows; the lowering), then WRN-16-4 bf16 and fp32 under cpp_wrapper=True against
# non-private compile under it: does the DP step compile with the C++ wrapper (no "could not compile" line below),
# and what does it do to the host's time a step? s38_call2.sh: the padded Gram rows on ViT-S/16.
cd "$(dirname "$0")/../../.."
PREFIX=s38-call1
LIMIT=590
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_mixed_precision.py" "cpp_wrapper or rows_padded or lowers_the_half_grams or half_products" 8 200
common="--model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --inductor-config cpp_wrapper=True"
run wrn16_dp_cpp 150 python3 benchmarks/dp_throughput.py $common --amp bf16 >/dev/null
run wrn32_dp_cpp 120 python3 benchmarks/dp_throughput.py $common >/dev/null
run wrn32_compile_cpp 60 python3 benchmarks/dp_throughput.py $common --method compile >/dev/null
summary
grep -h "could not compile" "$OUT"/$PREFIX-*.log | cut -c1-300 | sort | uniq -c
date -u
