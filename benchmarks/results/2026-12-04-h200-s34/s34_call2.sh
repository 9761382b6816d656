#!/usr/bin/env bash
# Session 34, call 2: (a) the backward graph behind call 1's CUDA-only refusal of the sequence-first shared-index
# embedding at a batch of one (dump_shared_rows.py); (b) the lowered kernel's bf16 test with a norm-wise comparison;
# (c) bf16 steps with the lowered kernel and without it, ResNet-18 (GN) 32² b256 in both orders and WRN-16-4 in the
# order opposite to call 1's, profiled (device and host time per step).
cd "$(dirname "$0")/../../.."
PREFIX=s34-call2
LIMIT=540
source benchmarks/device_call.sh
date -u; git log --oneline -1
DPCOMPILE_TEST_DEVICE=cuda timeout 120 python3 benchmarks/results/2026-12-04-h200-s34/dump_shared_rows.py \
    > $OUT/dump_shared_rows.log 2>&1; grep -v "Warning\|warn" $OUT/dump_shared_rows.log | tail -60
TESTS="tests/test_conv_kernels.py" PYTEST_ADDOPTS="-k inductor_launches" WORKERS=2 TEST_TIMEOUT=200 LIMIT=150 \
    OUT=$OUT/tests bash .ci/gpu inductor 2>&1 | tail -8
ON="benchmarks/with_plan.py IMPLICIT_CONV_DEVICES=('cuda',) --"
for m in resnet18_gn:on resnet18_gn:off wrn16_4:off resnet18_gn:off2 resnet18_gn:on2 wrn16_4:on; do
    model=${m%%:*}; which=${m##*:}
    TP="benchmarks/dp_throughput.py --model $model --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
    if [[ $which == on* ]]; then run "$model $which" 90 python3 $ON $TP; else run "$model $which" 90 python3 $TP; fi
done
for f in $OUT/s34-call2-*_o*.log; do
    echo "$f: $(tail -1 $f | python3 -c 'import json, sys
r = json.loads(sys.stdin.read()); print(r.get("step_ms"), r.get("host_ms"), r.get("kernel_ms_per_step"))' 2>&1 | tail -1)"
done
date -u
