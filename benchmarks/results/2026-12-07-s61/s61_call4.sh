#!/usr/bin/env bash
# Not run in the sixty-first session (its device budget went to seven refused starts): ops.KERNEL_OUTPUTS_AFTER_OPERANDS
# (the lowered kernels' output buffers wait for their operands) on the GPU. (a) The CUDA tests of the two lowered
# kernels, among them test_the_kernels_outputs_are_allocated_after_their_operands (the setting on and off, with the
# premise); beside them (b) WRN-16-4 32² b256 bf16's DP peak with the setting on and off (each process's own
# max_memory_allocated: the off run is the 0.758 GiB of calls 2 and of the sixtieth session; predicted on: about 0.70,
# the 58.5 MiB of kernel outputs allocated early no longer live at the peak), the generated modules kept; then (c)
# its step by device time, on and off (with_plan.py), and non-private torch.compile, if time is left. Turn the setting
# on by default if the tests pass and the peak falls with the step's device time within noise.
# Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s61/s61_call4.sh
cd "$(dirname "$0")/../../.."
PREFIX=s61-call4
LIMIT=${LIMIT:-480}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
peak="benchmarks/peak_memory.py --cudnn-benchmark --amp bf16 --model wrn16_4 --size 32 --batch 256 --method dp --policy auto --top 40"
mark
for on in True False; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-$on timeout -k 5 150 python3 benchmarks/with_plan.py \
        KERNEL_OUTPUTS_AFTER_OPERANDS=$on -- $peak > $OUT/$PREFIX-peak-after-$on.log 2>&1 &
done
gpu_tests "tests/test_conv_kernels.py tests/test_gram_kernels.py" "inductor or allocated or graphs or lowered or launches or waits" 6 160
wait
for on in True False; do
    echo "== peak, outputs after operands: $on"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-$on keep code-wrn-bf16-after-$on
    tail -1 $OUT/$PREFIX-peak-after-$on.log | cut -c1-600
done
cfg="--profile --amp bf16 --model wrn16_4 --size 32 --batch 256"
for on in True False; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-$on run "wrn bf16 auto after $on" 70 python3 benchmarks/with_plan.py \
        KERNEL_OUTPUTS_AFTER_OPERANDS=$on -- benchmarks/dp_throughput.py $cfg --policy auto
done
TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-np run "wrn bf16 compile" 60 python3 benchmarks/dp_throughput.py $cfg --method compile
summary
date -u
