#!/usr/bin/env bash
# The grouped release's step against the ungrouped one in one process (results/2026-12-07-s65/interleaved.py: both
# variants captured in one process, their synchronized steps timed in alternating blocks of 10, 80 steps each; one
# profiled step each counts the combo kernels, so a variant that did not take the group shows; PROFILE=1: each
# variant's cProfile of 10 steps), ResNet-18 (GN) 32² b256 and ResNet-50 (GN) 224² b32, fp32, `auto`.
# Decision rule (NOTES, sixty-fifth session): FOREACH_RELEASE_DEVICES = ("cuda",) if the interleaved median step is
# not slower on both.
# Predicted: medians within ±2% on ResNet-18 (−14 launches of 384); ResNet-50 (−99 of 865) 0–5% faster if the host
# bounds its step and a combo kernel's launch costs no more Python than a plain one's.
# First the CUDA tests of tests/test_released.py: the lowering (ops.lower_released) was simplified after its only CUDA
# run (sixty-fifth session, 671019e: the backend's FOREACH feature asked once), so that form has not run on CUDA yet.
# CONFIGS="resnet50_gn 224 32" runs one (comma-separated list).
# Tests about 70 s, both configs about 400 s. Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s66/s66_interleaved.sh
cd "$(dirname "$0")/../../.."
PREFIX=s66-interleaved
LIMIT=${LIMIT:-560}
source benchmarks/device_call.sh
gpu_tests tests/test_released.py "release or default" 2 120
export PROFILE=1
IFS=, read -ra configs <<< "${CONFIGS:-resnet18_gn 32 256,resnet50_gn 224 32}"
for config in "${configs[@]}"; do
    set -- $config
    (( $(left) > 60 )) || { echo "$config: skipped (time)"; continue; }
    log="$OUT/$PREFIX-$1.log"
    echo "== $config $(date -u +%T)"
    TORCHINDUCTOR_CACHE_DIR=/tmp/il-$1 timeout -k 5 $(( $(left) - 5 )) \
        python3 benchmarks/results/2026-12-07-s65/interleaved.py $config >"$log" 2>&1
    echo "rc $?"
    grep -E "first steps|device events|median|H100|H200|Error|error" "$log" | grep -v Warning | head -20
    # the cProfiles: each variant's top 12 by own time
    awk '/^== grouped/{p=1} p && /tottime|^ +[0-9]/' "$log" | head -30
done
date -u
