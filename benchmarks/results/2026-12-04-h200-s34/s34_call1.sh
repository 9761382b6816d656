#!/usr/bin/env bash
# Session 34, call 1: (a) on CUDA through inductor, the per-sample convolution kernel lowered by inductor itself
# (ops.lower_per_sample_conv2d_grad) and the thirty-third session's changes not yet run there (the _trilinear rule,
# the shared-index embedding at a batch of one, the refusal of a backward broadcasting a symbolic size, the kernel's
# default-off), with test_core, test_odd_sizes and test_symbolic for the new refusal's false positives; (b) the eager
# op's host time per call (launch_overhead.py, s33_call5); (c) WRN-16-4 32² b256 bf16 with the lowered kernel and
# without it, profiled (device and host time per step).
cd "$(dirname "$0")/../../.."
PREFIX=s34-call1
LIMIT=560
source benchmarks/device_call.sh
date -u; nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)'; git log --oneline -1
echo "== tests $(date -u +%T)"
TESTS="tests/test_conv_kernels.py tests/test_refusals.py tests/test_core.py tests/test_odd_sizes.py tests/test_symbolic.py" \
    WORKERS=14 TEST_TIMEOUT=250 LIMIT=280 OUT=$OUT/tests bash .ci/gpu inductor 2>&1 | tail -45
run "launch" 70 python3 benchmarks/results/2026-12-04-h200-s33/launch_overhead.py
grep -v Warning $OUT/s34-call1-launch.log | head -30
TP="benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
mark
run "implicit" 100 python3 benchmarks/with_plan.py "IMPLICIT_CONV_DEVICES=('cuda',)" -- $TP
keep implicit-code
run "before" 100 python3 $TP
for f in $OUT/s34-call1-implicit.log $OUT/s34-call1-before.log; do
    tail -1 $f | python3 -c 'import json, sys
r = json.loads(sys.stdin.read())
print(r.get("step_ms"), r.get("host_ms"), r.get("kernel_ms_per_step"))
for k in r.get("kernels", [])[:8]: print(round(k["device_ms"], 3), k["calls_per_step"], k["kernel"][:60], k["first_sources"][:2])' || tail -20 $f
done
date -u
