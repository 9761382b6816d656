#!/usr/bin/env bash
# Written in session 36 for the next session (not run yet; after s37_call2.sh). Inductor's C++ wrapper on WRN-16-4
# 32² b256 bf16: the DP step launches about 400 kernels against compile's 257 and these hosts spend about 28 µs of
# Python a launch; combo_kernels (fewer launches, more arguments each) did not help (twenty-fourth session) and
# cpp_wrapper's first step on ResNet-50's 1,300 launches took over 250 s (twenty-second): on WRN-16-4's smaller
# graphs, does cpp_wrapper=True compile in time and take the host out? Against non-private compile with it too.
cd "$(dirname "$0")/../../.."
PREFIX=s37-call3
LIMIT=540
source benchmarks/device_call.sh
date -u
common="--model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
run wrn16_compile_cpp 120 python3 benchmarks/dp_throughput.py $common --method compile \
    --inductor-config cpp_wrapper=True >/dev/null
run wrn16_dp_cpp 300 python3 benchmarks/dp_throughput.py $common --inductor-config cpp_wrapper=True >/dev/null
run wrn32_dp_cpp 150 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --inductor-config cpp_wrapper=True >/dev/null
summary
date -u
