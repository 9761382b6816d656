#!/usr/bin/env bash
# Call 2 of the sixty-fifth session (after s66_release.sh CALL=1): in call 1 both grouped-release runs of ResNet-18
# (GN) 32² fp32 had a slower host (14.1 and 16.0 ms against 11.3 and 12.1 ms a step) but also a slower forward, an
# identical graph, and slower aten::bmm calls under the profiler: the host or the change? Here each variant keeps its
# inductor cache (compiled once, in round 1) and rounds 2-4 alternate off and on without the profiler, 40 timed steps
# each; then ResNet-50 (GN) 224² b32 fp32 off and on with the profiler (cold caches).
# Predicted: no host difference beyond the rounds' spread if call 1's was the host; the launches' Python (about 15 µs
# each) says about 0.2 ms less with the group on ResNet-18, about 1.5 ms on ResNet-50.
cd "$(dirname "$0")/../../.."
PREFIX=s66-release-ab
LIMIT=${LIMIT:-560}
source benchmarks/device_call.sh
t="python3 benchmarks/dp_throughput.py --amp fp32 --model resnet18_gn --size 32 --batch 256 --policy auto --steps 40"
for round in 1 2 3 4; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/ab-off run "off $round" 90 $t
    TORCHINDUCTOR_CACHE_DIR=/tmp/ab-on run "on $round" 90 $t --foreach-release
done
t="python3 benchmarks/dp_throughput.py --profile --amp fp32 --model resnet50_gn --size 224 --batch 32 --policy auto"
TORCHINDUCTOR_CACHE_DIR=/tmp/r50-off run "r50 off" 170 $t
TORCHINDUCTOR_CACHE_DIR=/tmp/r50-on run "r50 on" 170 $t --foreach-release
summary
launches "r50*"
date -u
