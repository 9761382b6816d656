#!/usr/bin/env bash
# Sixty-second session, call 1: s61_call4.sh and s62_call2.sh's first half in one call (device starts are scarce):
# ops.KERNEL_OUTPUTS_AFTER_OPERANDS on the GPU. (a) The CUDA tests of the two lowered kernels (among them
# test_the_kernels_outputs_are_allocated_after_their_operands, with its premise) beside WRN-16-4 32² b256 bf16's DP
# peak with the setting on and off (predicted: 0.758 → about 0.70 GiB; the generated modules kept); (b) the peaks of
# ResNet-18 (GN) 32² b256 (with non-private torch.compile's beside it) and ResNet-50 (GN) 224² b32 in bf16, on and
# off (predicted: neither rises); (c) WRN-16-4 bf16's step by device time on and off, and non-private torch.compile; (b) runs last, in what is left.
# Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s62/s62_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s62-call1
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
source benchmarks/results/2026-12-07-s62/peaks.sh
echo "== (a) $(date -u +%T)"
mark
peak wrn-bf16 150 --amp bf16 --model wrn16_4 --size 32 --batch 256 --top 40
gpu_tests "tests/test_conv_kernels.py tests/test_gram_kernels.py" "inductor or allocated or graphs or lowered or launches or waits" 6 160
wait
show wrn-bf16
for on in True False; do TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16-$on keep code-wrn-bf16-after-$on; done
echo "== (c) $(date -u +%T)"
cfg="--profile --amp bf16 --model wrn16_4 --size 32 --batch 256"
for on in True False; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16-$on run "wrn bf16 auto after $on" 60 python3 benchmarks/with_plan.py \
        KERNEL_OUTPUTS_AFTER_OPERANDS=$on -- benchmarks/dp_throughput.py $cfg --policy auto
done
TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-np run "wrn bf16 compile" 60 python3 benchmarks/dp_throughput.py $cfg --method compile
echo "== (b) $(date -u +%T)"
(( $(left) > 90 )) && NP=1 peak r18-32-bf16 170 --amp bf16 --model resnet18_gn --size 32 --batch 256
(( $(left) > 150 )) && peak r50-bf16 220 --amp bf16 --config resnet50_224 --batch 32
wait
show r18-32-bf16; show r50-bf16
summary
date -u
