#!/usr/bin/env bash
# For the sixty-sixth session (written in the sixty-fifth, which had no device): the released gradients as one
# horizontally fused group for inductor (passes.rewrite.FOREACH_RELEASE_DEVICES, dp_throughput.py --foreach-release),
# off by default until this call. Each parameter's finish ((scale·clipped + noise) / n) was a Triton kernel of its own
# wherever its clipped sum came from an extern kernel, and each GroupNorm term's clipped sum carried its own finish,
# which kept inductor from fusing those sums across layers. Inductor's Triton code generated on a CPU
# (results/2026-12-07-s65/census_release.py, b16) has 697 launches in ResNet-50 (GN) 64²'s DP backward against 777
# (212 kernels generated against 293), 792 in ViT-S/16 64²'s against 929 (63 against 205).
#   CALL=1: the CUDA tests (tests/test_released.py: combo kernels launched, the same release as ungrouped, torch.func's
#           in float64), then ResNet-18 (GN) 32² b256 fp32 `auto`, off and on alternating, two rounds.
#   CALL=2: ResNet-50 (GN) 224² b32 fp32 `auto` off and on, then non-private compile.
#   CALL=3: ResNet-50 (GN) 224² b32 bf16 `auto` off and on, then non-private compile.
#   CALL=4: ViT-S/16 224² b64 bf16 `auto` off and on, then non-private compile.
# Each run from a cold inductor cache of its own (--profile: step, host and device ms; launches a step from the
# profile's cuLaunchKernel count).
# Predicted: ResNet-18 32² fp32 about 20 launches a step fewer of 352 (host about 0.3 ms less at 15 µs a launch),
# ResNet-50 about 90 fewer of 1,280 (host 1.4–2.7 ms less at 15–30 µs a launch: 4–6% of a host-bound step), device
# time within ±2% (the finishes' work is the same, in fewer and fuller launches), the first step shorter by the
# kernels not generated (ResNet-50: about 80 of 700, a few seconds), peak memory unchanged (the finishes write in
# place into the clipped sums' buffers, as inductor's reuse did before). If the tests pass and the step is not slower
# by device time, set FOREACH_RELEASE_DEVICES = ("cuda",) (rewrite.py's comment, README, test_released.py's
# test_off_by_default).
# Run alone from the repository root, carry .whl:   CALL=1 bash benchmarks/results/2026-12-07-s65/s66_release.sh
cd "$(dirname "$0")/../../.."
PREFIX=s66-release-${CALL:?CALL=1 to 4}
LIMIT=${LIMIT:-560}
source benchmarks/device_call.sh
case $CALL in
1) gpu_tests tests/test_released.py "release or default" 2 150
   t="python3 benchmarks/dp_throughput.py --profile --amp fp32 --model resnet18_gn --size 32 --batch 256 --policy auto"
   for round in 1 2; do
       TORCHINDUCTOR_CACHE_DIR=/tmp/c-off-$round run "off $round" 100 $t
       TORCHINDUCTOR_CACHE_DIR=/tmp/c-on-$round run "on $round" 100 $t --foreach-release
   done ;;
2|3) amp=fp32; [ "$CALL" = 3 ] && amp=bf16
   t="python3 benchmarks/dp_throughput.py --profile --amp $amp --model resnet50_gn --size 224 --batch 32"
   TORCHINDUCTOR_CACHE_DIR=/tmp/c-off run "off" 200 $t --policy auto
   TORCHINDUCTOR_CACHE_DIR=/tmp/c-on run "on" 200 $t --policy auto --foreach-release
   TORCHINDUCTOR_CACHE_DIR=/tmp/c-np run "compile" 100 $t --method compile ;;
4) t="python3 benchmarks/dp_throughput.py --profile --amp bf16 --model vit_s16 --size 224 --batch 64"
   TORCHINDUCTOR_CACHE_DIR=/tmp/c-off run "off" 200 $t --policy auto
   TORCHINDUCTOR_CACHE_DIR=/tmp/c-on run "on" 200 $t --policy auto --foreach-release
   TORCHINDUCTOR_CACHE_DIR=/tmp/c-np run "compile" 100 $t --method compile ;;
esac
summary
launches "*"
date -u
