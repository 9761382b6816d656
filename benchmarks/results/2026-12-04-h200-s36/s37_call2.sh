#!/usr/bin/env bash
# Written in session 36 for the next session (not run yet; after s37_call1.sh). (1) WRN-16-4 32² b256 fp32 with the
# per-sample products IEEE (--no-per-sample-tf32: no dpcompile::tf32_* fallbacks, slower products), against call 1's
# TF32 default: the fallbacks' host cost. (2) Inductor's C++ wrapper on WRN-16-4 bf16: the DP step launches about 400
# kernels against compile's 257 and these hosts spend about 28 µs of Python a launch; combo_kernels (fewer launches,
# more arguments each) did not help (twenty-fourth session) and cpp_wrapper's first step on ResNet-50's 1,300
# launches took over 250 s (twenty-second): on WRN-16-4's smaller graphs, does cpp_wrapper=True compile in time and
# take the host out? (3) ViT-S/16 224² b64 bf16 non-private compile, profiled: the device-time ratio the
# thirty-sixth session could not give (its dpcompile step: 17.96 ms of device time).
cd "$(dirname "$0")/../../.."
PREFIX=s37-call2
LIMIT=560
source benchmarks/device_call.sh
date -u
common="--model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --profile"
run wrn32_ieee 100 python3 benchmarks/dp_throughput.py $common --no-per-sample-tf32 >/dev/null
run wrn16_cpp 180 python3 benchmarks/dp_throughput.py $common --amp bf16 --inductor-config cpp_wrapper=True \
    >/dev/null
run vit_compile 90 python3 benchmarks/dp_throughput.py --model vit_s16 --size 224 --batch 64 --steps 20 \
    --method compile --amp bf16 --profile >/dev/null
summary
date -u
