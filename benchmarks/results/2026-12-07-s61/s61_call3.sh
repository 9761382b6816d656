#!/usr/bin/env bash
# Sixty-first session, call 3: the kernels' output buffers allocated after their operands (ops.empty_after).
# (a) the CUDA tests of the two lowered kernels (test_conv_kernels.py, test_gram_kernels.py; the new
# test_the_kernels_outputs_are_allocated_after_their_operands checks the premise with a plain allocation too);
# (b) WRN-16-4 32² b256 bf16's DP peak with empty_after and with the plain allocation (plain_alloc_run.py; 0.758 GiB
# on an H100 before; predicted about 0.70 with the fix), the fixed run's generated module kept; (c) its step by
# device time, and non-private torch.compile in the same call. Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s61/s61_call3.sh
cd "$(dirname "$0")/../../.."
PREFIX=s61-call3
LIMIT=${LIMIT:-450}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_conv_kernels.py tests/test_gram_kernels.py" "inductor or allocated or graphs or lowered or launches" 8 120
peak="benchmarks/peak_memory.py --cudnn-benchmark --amp bf16 --model wrn16_4 --size 32 --batch 256 --method dp --policy auto --top 40"
for mode in after plain; do
    (( $(left) > 60 )) || break
    echo "== wrn bf16 peak $mode $(date -u +%T)"
    mark
    pre=$([ $mode = plain ] && echo benchmarks/results/2026-12-07-s61/plain_alloc_run.py || echo)
    [ $mode = plain ] && peak=${peak#benchmarks/}
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16-$mode timeout -k 5 110 python3 $pre $peak > $OUT/$PREFIX-wrn-bf16-peak-$mode.log 2>&1
    echo "exit $?"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16-$mode keep code-wrn-bf16-$mode
    tail -1 $OUT/$PREFIX-wrn-bf16-peak-$mode.log | cut -c1-700
done
cfg="--profile --amp bf16 --model wrn16_4 --size 32 --batch 256"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16-after run "wrn bf16 auto" 80 python3 benchmarks/dp_throughput.py $cfg --policy auto
TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16-np run "wrn bf16 compile" 60 python3 benchmarks/dp_throughput.py $cfg --method compile
summary
date -u
