#!/usr/bin/env bash
# For a later session (written in the sixty-fourth): the largest batch that fits, non-private torch.compile and
# dpcompile `auto`, one suite config per call and process (bench.py --largest-batch after the timing; an earlier
# session's non-private compile failed after another config's out-of-memory tries in the same process). The last
# figures are the twenty-sixth to twenty-eighth sessions' (H200, fp32): ViT-S/16 about 0.78×, ResNet-18 32² about
# 0.52×, 224² about 0.58×; WRN-16-4 and ResNet-50 were never searched for dpcompile. Predicted from
# live_memory.py's per-sample walk (twenty-eighth session): WRN-16-4 about 0.52×, ResNet-50 about 0.79×; the others
# as before (the plans moved little since).
#   CONFIG=wrn16_4_32 bash benchmarks/results/2026-12-07-s64/s65_largest.sh     (carry .whl; CONFIG=smoke on a CPU:
#   a dry run, whose searches say "n/a (cpu)")
cd "$(dirname "$0")/../../.."
PREFIX=s65-largest-${CONFIG:?CONFIG=resnet18_32, wrn16_4_32, resnet18_224, resnet50_224 or vit_s16_224}
LIMIT=${LIMIT:-560}
mkdir -p "${OUT:-/tmp/out}"
source benchmarks/device_call.sh
timeout -s INT -k 20 "$(left)" python3 benchmarks/bench.py --configs "$CONFIG" --methods dp_auto,compile \
    --largest-batch dp_auto,compile --largest-batch-seconds 200 --cudnn-benchmark \
    --budget-seconds $(( $(left) - 40 )) --out "$OUT" --name "$PREFIX" >"$OUT/$PREFIX.log" 2>&1
sed -n '/^## Summary/,$p' "$OUT/$PREFIX.md" 2>/dev/null || tail -30 "$OUT/$PREFIX.log"
grep -i "largest" "$OUT/$PREFIX.log" | tail -20
date -u
