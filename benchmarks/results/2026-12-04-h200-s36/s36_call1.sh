#!/usr/bin/env bash
# Written in session 35 for the next session's first device call (not run yet): the ghost Grams of bf16 operands as
# bf16 tensor-core products with fp32 results (dpcompile::half_bmm, passes.rules.bounds.HALF_GRAM_DEVICES, off by
# default). (a) Their CUDA tests: the tensor-core bound against exact Grams on crafted and random operands
# (test_norm_bounds -k bf16_grams), the rewrite through them under bf16 autocast (test_mixed_precision -k
# half_products; the tests list the device themselves). (b) WRN-16-4 32² b256 bf16 `auto`, profiled, with them off
# then on, in one call. Predicted: device time 5.92 → about 5.45 ms (most of the 0.54 ms of fp32 SIMT GEMMs gone).
# If both hold: HALF_GRAM_DEVICES = ("cuda",) by default, and ResNet-18 (s36_call2.sh) with them.
cd "$(dirname "$0")/../../.."
PREFIX=s36-call1
LIMIT=560
source benchmarks/device_call.sh
date -u
TESTS="tests/test_norm_bounds.py tests/test_mixed_precision.py" PYTEST_ADDOPTS="-k 'bf16_grams or half_products or half_grams or half_bmm'" \
    WORKERS=4 TEST_TIMEOUT=120 LIMIT=130 OUT=$OUT/tests bash .ci/gpu inductor 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|passed|failed|Timeout|Error" | grep -v "^INTERNALERROR" | tail -8
for model in wrn16_4; do
    common="--model $model --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
    run ${model}_off 110 python3 benchmarks/dp_throughput.py $common >/dev/null
    run ${model}_on 110 python3 benchmarks/with_plan.py "HALF_GRAM_DEVICES=('cuda',)" -- \
        benchmarks/dp_throughput.py $common >/dev/null
done
run r18_on 200 python3 benchmarks/with_plan.py "HALF_GRAM_DEVICES=('cuda',)" -- \
    benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile >/dev/null
summary
date -u
