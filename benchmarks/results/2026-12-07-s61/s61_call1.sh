#!/usr/bin/env bash
# Sixty-first session, call 1: (a) the grouped per-sample form with channels-last folded operands, layer by layer
# (folded_cl.py); (b) the `auto_extra_memory` setting's path on the GPU: ResNet-18 (GN) 224² b64 `auto` with
# --auto-extra-memory 0.1 (expected: layer3's three terms ghost, peak ≈ 1.874 GiB, device ≈ 12.64 ms as the sixtieth
# session's module-constant run), fp32 then bf16. Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s61/s61_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s61-call1
LIMIT=${LIMIT:-540}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
echo "== folded_cl $(date -u +%T)"
timeout -k 5 200 python3 benchmarks/results/2026-12-07-s61/folded_cl.py > $OUT/$PREFIX-folded_cl.jsonl 2> $OUT/$PREFIX-folded_cl.err
echo "exit $?"
grep '^row:' $OUT/$PREFIX-folded_cl.err
for amp in fp32 bf16; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-224-$amp run "auto 0.1 $amp" 130 python3 benchmarks/dp_throughput.py --profile \
        --amp $amp --model resnet18_gn --size 224 --batch 64 --policy auto --auto-extra-memory 0.1
done
summary
date -u
