#!/usr/bin/env bash
# For the next session's first call (written in the forty-eighth): the suite's ResNet-18 (GN) 224² b64 as the suite
# defines it (ImageNet's stem, 1000 classes; until the forty-eighth session dp_throughput.py built a small-input
# ResNet-18 at 224², 16× the FLOPs), fp32 and bf16, non-private torch.compile then dpcompile `auto`, each from a cold
# inductor cache, 20 timed steps and 5 profiled; then the per-sample convolution kernel layer by layer at the 224²
# shapes (per_sample_224.py, with the kernel's joint tiles for few input channels). First the bucket test fixed
# after s48 call 1 and the joint tiles' CUDA tests. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s48/s49_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s49-call1
LIMIT=540
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_buckets.py" "mean_loss" 2 60  # the test whose premise failed on CUDA in s48 call 1
# the per-sample kernel's joint tiles (written in the forty-eighth session, off by default): random convolutions in
# both tilings and the rewrite through them, against float64
gpu_tests "tests/test_conv_kernels.py" "random_convolutions or rewrite_through" 8 150
suite fp32 resnet18_gn 224 64 110
suite bf16 resnet18_gn 224 64 110
summary
timeout $(( $(left) - 10 )) python3 benchmarks/results/2026-12-06-s48/per_sample_224.py \
    > "$OUT/per_sample_224.jsonl" 2>"$OUT/per_sample_224.err"
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r["shape"], "|", r["layout"], "| best", r["best_ms"], r["best_config"], "| floor", r["cudnn_batched_wgrad_ms"],
          "| x", r["ratio_to_floor"], "|", r["tflops"], "TFLOP/s | err", "%.1e" % r["rel_err"])' "$OUT/per_sample_224.jsonl"
tail -3 "$OUT/per_sample_224.err"
date -u
