#!/usr/bin/env bash
# Written in session 36 for the next session's first device call (not run yet). (1) The DP graphs now lower with
# inductor's emulate_precision_casts (backend.STRICT_ARITHMETIC: a bf16 value that a Triton kernel both stores and
# reduces is reduced as stored), which no GPU has run: the test that shows it (test_gpu_paths -k reduced_bf16, which
# fails without it where inductor fuses the two), the settings test, the bf16 tests of test_mixed_precision and
# test_adversarial (the new rounded-up operands among them), the WRN-16-4 bf16 model test; then WRN-16-4 bf16's
# step with it (the default) and without it (with_plan, STRICT_ARITHMETIC without the key): what it costs. (2) What the TF32 ops cost the host as
# inductor fallbacks: WRN-16-4 32² b256 fp32 `auto`, profiled, against non-private compile; the profile's
# dpcompile::tf32_* CPU rows and the host times decide whether those ops need a lowering (NOTES, thirty-sixth
# session, Next 1). s37_call2.sh has the rest.
cd "$(dirname "$0")/../../.."
PREFIX=s37-call1
LIMIT=590
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_gpu_paths.py tests/test_mixed_precision.py tests/test_adversarial.py tests/test_models.py" \
    "reduced_bf16 or fast_math or test_mixed_precision.py or (test_adversarial.py and bf16) or (bf16_autocast and wrn16_4-mixed)" \
    8 210
common="--model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --profile"
run wrn16_dp 90 python3 benchmarks/dp_throughput.py $common --amp bf16 >/dev/null
run wrn16_no_emulate 90 python3 benchmarks/with_plan.py \
    'STRICT_ARITHMETIC={"cpp.enable_unsafe_math_opt_flag": False, "cpp.enable_floating_point_contract_flag": "off", "use_fast_math": False, "cuda.use_fast_math": False}' \
    -- benchmarks/dp_throughput.py $common --amp bf16 >/dev/null
run wrn32_compile 70 python3 benchmarks/dp_throughput.py $common --method compile >/dev/null
run wrn32_tf32 100 python3 benchmarks/dp_throughput.py $common >/dev/null
summary
grep -h "dpcompile::\|Self CPU time total" "$OUT"/$PREFIX-wrn32_tf32.log | head -4
date -u
