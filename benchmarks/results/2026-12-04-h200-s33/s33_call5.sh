#!/usr/bin/env bash
# Session 33, call 5 (not run: the session's device time was spent; for the next session): the per-sample
# convolution kernel's host time per call (launch_overhead.py).
cd "$(dirname "$0")/../../.."
PREFIX=s33-call5
LIMIT=110
source benchmarks/device_call.sh
run "launch" 100 python3 benchmarks/results/2026-12-04-h200-s33/launch_overhead.py
grep -v Warning $OUT/s33-call5-launch.log | head -60
