#!/usr/bin/env bash
# Session 33, call 4: why call 3's bf16 steps got slower with the Triton kernel (WRN-16-4 11.2 against 9.7 ms):
# WRN-16-4 32² b256 bf16 autocast, dpcompile auto profiled (device time per step, top kernels, products), with the
# kernel and without it (IMPLICIT_CONV_DEVICES=()), in one call.
cd "$(dirname "$0")/../../.."
PREFIX=s33-call4
LIMIT=330
source benchmarks/device_call.sh
date -u
TP="benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
run "implicit" 150 python3 $TP
run "before" 150 python3 benchmarks/with_plan.py "IMPLICIT_CONV_DEVICES=()" -- $TP
for f in $OUT/s33-call4-implicit.log $OUT/s33-call4-before.log; do
    tail -1 $f | python3 -c 'import json, sys
r = json.loads(sys.stdin.read())
print(r.get("step_ms"), r.get("host_ms"), r.get("kernel_ms_per_step"))
for k in r.get("kernels", [])[:14]: print(round(k["device_ms"], 3), k["calls_per_step"], k["kernel"][:60], k["first_sources"][:2])'
done
date -u
