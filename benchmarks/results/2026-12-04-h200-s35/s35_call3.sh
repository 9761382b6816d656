#!/usr/bin/env bash
# Session 35, call 3: (a) on CUDA, the half-precision model through the kernel (fp16 now on by default) and the 2-D
# convolution models' bf16 tests call 2 left unrun; (b) the DP passes' time on ResNet-50 on this host's CPU (the
# snippet traces without make_fx's torch-function mode); (c) ResNet-18 (GN) 32² b256 bf16 profiled: non-private
# compile, dpcompile auto (kernel on), dpcompile auto with cuda_graphs=True; then WRN-16-4 bf16 non-private compile
# with CUDA graphs (mode="reduce-overhead"), against call 2's dpcompile with cuda_graphs=True.
cd "$(dirname "$0")/../../.."
PREFIX=s35-call3
LIMIT=520
source benchmarks/device_call.sh
date -u
TESTS="tests/test_conv_kernels.py tests/test_models.py" \
    PYTEST_ADDOPTS="-k 'half_precision or (bf16_autocast and (resnet18_gn-ghost or resnet18_gn-per_sample or wrn16_4-ghost or convnext_block-mixed or convnext_block-per_sample or mobilenet_block-per_sample))'" \
    WORKERS=8 TEST_TIMEOUT=180 LIMIT=190 OUT=$OUT/tests bash .ci/gpu inductor 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|passed|failed|Timeout|Error" | grep -v "^INTERNALERROR" | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | tail -20
timeout 60 python3 benchmarks/pass_times.py --models resnet50_gn --snippets 3 2>&1 | tail -5
common="--model resnet18_gn --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
run r18_compile 80 python3 benchmarks/dp_throughput.py $common --method compile >/dev/null
run r18_dp 90 python3 benchmarks/dp_throughput.py $common >/dev/null
run r18_dp_graphs 90 python3 benchmarks/dp_throughput.py $common --cuda-graphs >/dev/null
run wrn_compile_graphs 80 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 20 \
    --policy auto --amp bf16 --profile --method compile --cuda-graphs >/dev/null
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    try: r = json.loads(line)
    except ValueError: continue
    print(r["model"], r["policy"], "graphs", r["cuda_graphs"], "step", r["step_ms"], "host", r.get("host_ms"), "device", r.get("kernel_ms_per_step"))' $OUT/$PREFIX.jsonl
date -u
