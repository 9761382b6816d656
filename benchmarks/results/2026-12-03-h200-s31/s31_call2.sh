#!/usr/bin/env bash
# Session 31, call 2, WRN-16-4 32² b256 auto: (a) call 1 (FX graph cache off) had cuDNN's NCHW↔NHWC conversions in
# the DP step (0.96 ms a step) that the thirtieth session's profile (cache on) did not: the same run with the cache
# on; (b) the shifted per-sample products over the padded x's windows (windows.py: nine products, no stacked copy
# of x, whose kernel took 1.06 ms a step) profiled; (c) both forms with cuda_graphs=True, where the host no longer
# sets the pace; (d) non-private compile in the same call. The DP backward's generated wrappers are kept.
cd "$(dirname "$0")/../../.."
PREFIX=s31-call2
source benchmarks/device_call.sh
date -u
TP="benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto"
W=benchmarks/results/2026-12-03-h200-s31/windows.py
mark
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-a
run "dp cache_on" 110 python3 $TP --profile
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-b TORCHINDUCTOR_FX_GRAPH_CACHE=0
mark
run "dp windows" 110 python3 $W --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --profile
keep windows
unset TORCHINDUCTOR_FX_GRAPH_CACHE
run "compile" 50 python3 $TP --method compile
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-c
run "dp graphs" 110 python3 $TP --cuda-graphs
run "dp graphs windows" 110 python3 $W --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --cuda-graphs
run "compile again" 50 python3 $TP --method compile
date -u
