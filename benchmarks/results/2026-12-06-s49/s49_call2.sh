#!/usr/bin/env bash
# Forty-ninth session, second call, after call 1 found the per-sample convolution kernel 1.1-6x faster with g
# channels-last than with the NCHW g the compiled steps gave it, and its joint tiles 2-4.5x faster for 3 and 16 input
# channels: the op and inductor's lowering now pass both operands channels-last, and JOINT_MAX_CHANNELS is 32. Here:
# the kernel's CUDA tests through inductor (the lowering changed), the joint tiles against per-position ones with g
# channels-last up to 48 channels (where to set the threshold), then ResNet-50 (GN) 224² b32 bf16 (the suite's worst
# ratio, 2.09x by the wall in s48) non-private compile and `auto`. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s49/s49_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s49-call2
LIMIT=565
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_conv_kernels.py" "rewrite_through or launches_the_kernel_itself" 8 150
timeout 60 python3 benchmarks/results/2026-12-06-s49/per_sample_224.py --joint \
    > "$OUT/joint.jsonl" 2>"$OUT/joint.err"
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["shape"], "|", r["layout"], "| best", r["best_ms"], r["best_config"], "| floor", r["cudnn_batched_wgrad_ms"],
          "| x", r["ratio_to_floor"], "| err", "%.1e" % r["rel_err"])' "$OUT/joint.jsonl"
tail -2 "$OUT/joint.err"
suite bf16 resnet50_gn 224 32 130
summary
date -u
