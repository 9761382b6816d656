#!/usr/bin/env bash
# For the sixty-fifth session (written in the sixty-fourth; NOTES' sixty-fourth Next 2): do fewer launches move a
# host-bound DP step? Inductor's horizontal fusion (`combo_kernels=True`) halved WRN-16-4's DP backward launches in the
# twenty-fourth session without moving its host time, while the sixty-fourth session's profile puts about 15 µs of
# Python on every launch. ResNet-18 (GN) 32² b256 fp32 `auto`, the default and combo_kernels alternating, each from a
# cold cache of its own, then non-private compile (dp_throughput.py --profile: step, host, device ms and the top
# kernels; the launches a step from the profile's cuLaunchKernel count).
# Predicted: with combo kernels about 250 launches a step against 352 and, if a launch's Python is what bounds the
# host, about 1.5 ms less host time a step (100 × 15 µs); no change in device time beyond ±3%.
# Run alone from the repository root, carry .whl:   bash benchmarks/results/2026-12-07-s64/s65_combo.sh
cd "$(dirname "$0")/../../.."
PREFIX=s65-combo
LIMIT=${LIMIT:-560}
source benchmarks/device_call.sh
t="python3 benchmarks/dp_throughput.py --profile --amp fp32 --model resnet18_gn --size 32 --batch 256 --policy auto"
for round in 1 2; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-default-$round run "default $round" 120 $t
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-combo-$round run "combo $round" 120 $t --inductor-config combo_kernels=True
done
TORCHINDUCTOR_CACHE_DIR=/tmp/c-np run "compile" 60 $t --method compile
summary
launches "*"
date -u
