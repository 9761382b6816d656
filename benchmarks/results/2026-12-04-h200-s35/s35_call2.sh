#!/usr/bin/env bash
# Session 35, call 2: (a) the CUDA tests call 1 left unrun: the kernel's random-convolution test (fp16 draws decide
# whether fp16 joins IMPLICIT_CONV_DTYPES), the new test of the lowered kernel under cuda_graphs=True, the CUDA-graph
# tests, the 2-D convolution models' bf16 tests under the new default; (b) WRN-16-4 32² b256 bf16 profiled (device
# time a step): non-private compile, dpcompile auto (kernel on by default), dpcompile auto with cuda_graphs=True.
cd "$(dirname "$0")/../../.."
PREFIX=s35-call2
LIMIT=580
source benchmarks/device_call.sh
date -u
TESTS="tests/test_conv_kernels.py tests/test_gpu_paths.py tests/test_models.py" \
    PYTEST_ADDOPTS="-k 'conv_kernels or cuda_graphs or (bf16_autocast and (resnet18 or wrn16 or convnext or mobilenet))'" \
    WORKERS=14 TEST_TIMEOUT=260 LIMIT=280 OUT=$OUT/tests bash .ci/gpu inductor 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|passed|failed|Timeout|Error" | grep -v "^INTERNALERROR" | sed 's/^\[gw[0-9]*\] \[ *[0-9]*%\] //' | tail -40
common="--model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
run compile 110 python3 benchmarks/dp_throughput.py $common --method compile
run dp 110 python3 benchmarks/dp_throughput.py $common
run dp_graphs 100 python3 benchmarks/dp_throughput.py $common --cuda-graphs
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    try: r = json.loads(line)
    except ValueError: continue
    print(r["policy"], "graphs", r["cuda_graphs"], "step", r["step_ms"], "host", r.get("host_ms"), "device", r.get("kernel_ms_per_step"))' $OUT/$PREFIX.jsonl
date -u
