#!/usr/bin/env bash
# Session 34, call 4: the lowered kernel's tests with the code check reading calls, not comments (call 3: the
# kernel was launched and the gradients matched; a comment named the op); ResNet-18 (GN) bf16 with the kernel once
# more, its generated code kept (call 3: host time 22.7 against 18.2 ms without the kernel).
cd "$(dirname "$0")/../../.."
PREFIX=s34-call4
LIMIT=230
source benchmarks/device_call.sh
export DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor
timeout 100 python3 -m pytest -q -n 0 -p no:cacheprovider --tb=short -rf \
    "tests/test_conv_kernels.py::test_inductor_launches_the_kernel_itself" > $OUT/tests.log 2>&1
echo "tests exit $?"; grep -v "DEBUG\|Warning\|warn(\|^  \|^$" $OUT/tests.log | tail -12
unset DPCOMPILE_TEST_DEVICE DPCOMPILE_TEST_BACKEND
mark
run "r18 on" 110 python3 benchmarks/with_plan.py "IMPLICIT_CONV_DEVICES=('cuda',)" -- \
    benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --steps 20 --policy auto --amp bf16
keep r18-on-code
date -u
