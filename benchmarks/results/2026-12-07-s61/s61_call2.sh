#!/usr/bin/env bash
# Sixty-first session, call 2: (a) does `auto`'s cost model still pick well? ResNet-18 (GN) 32² b256 fp32 with the
# policies auto, ghost and mixed in one call (device time, peak); (b) WRN-16-4 bf16's DP peak (1.37×): peak_memory.py
# with the DP backward's generated module kept (NOTES' Next 1); (c) WRN-16-4 fp32 auto and ghost if time is left.
# Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s61/s61_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s61-call2
LIMIT=${LIMIT:-540}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
cfg="--profile --amp fp32 --model resnet18_gn --size 32 --batch 256"
for policy in auto ghost mixed; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-$policy run "r18 $policy" 85 python3 benchmarks/dp_throughput.py $cfg --policy $policy
done
echo "== wrn bf16 peak $(date -u +%T)"
mark
TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16 timeout -k 5 110 python3 benchmarks/peak_memory.py --cudnn-benchmark \
    --amp bf16 --model wrn16_4 --size 32 --batch 256 --method dp --policy auto --top 40 > $OUT/$PREFIX-wrn-bf16-peak.log 2>&1
echo "exit $?"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16 keep code-wrn-bf16
tail -1 $OUT/$PREFIX-wrn-bf16-peak.log | cut -c1-3000
cfg="--profile --amp fp32 --model wrn16_4 --size 32 --batch 256"
for policy in auto ghost; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-$policy run "wrn $policy" 75 python3 benchmarks/dp_throughput.py $cfg --policy $policy
done
summary
date -u
