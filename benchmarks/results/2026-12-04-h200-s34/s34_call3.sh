#!/usr/bin/env bash
# Session 34, call 3: (a) in one process, without xdist (call 2 lost both of its workers, no log came back): the
# lowered kernel's tests and the shared-index embedding at a batch of one with the one-sample guard reading
# Eq(3*s77, 3); (b) ResNet-18 (GN) 32² b256 bf16 with the lowered kernel and without it (call 2's caps were too
# short for its cold compile).
cd "$(dirname "$0")/../../.."
PREFIX=s34-call3
LIMIT=520
source benchmarks/device_call.sh
date -u; git log --oneline -1
export DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor
timeout 200 python3 -m pytest -q -n 0 -p no:cacheprovider --tb=short -rf \
    "tests/test_conv_kernels.py::test_inductor_launches_the_kernel_itself" \
    "tests/test_core.py::test_shared_index_rows_at_a_batch_of_one" > $OUT/tests.log 2>&1
echo "tests exit $?"; grep -v "Warning\|warn(\|^  \|^$" $OUT/tests.log | tail -40
unset DPCOMPILE_TEST_DEVICE DPCOMPILE_TEST_BACKEND
TP="benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
run "r18 on" 150 python3 benchmarks/with_plan.py "IMPLICIT_CONV_DEVICES=('cuda',)" -- $TP
run "r18 off" 150 python3 $TP
date -u
