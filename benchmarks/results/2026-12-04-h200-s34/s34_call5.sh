#!/usr/bin/env bash
# Session 34, call 5 (run as one command on the still-warm machine of call 4): ResNet-18 (GN) 32² b256 bf16, 30
# steps, unprofiled, without the lowered kernel and with it, twice in alternating order.
cd "$(dirname "$0")/../../.."
PREFIX=s34-call5
LIMIT=200
source benchmarks/device_call.sh
TP="benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --steps 30 --policy auto --amp bf16"
ON="benchmarks/with_plan.py IMPLICIT_CONV_DEVICES=('cuda',) --"
run "r18 off" 60 python3 $TP
run "r18 on" 60 python3 $ON $TP
run "r18 off2" 60 python3 $TP
run "r18 on2" 60 python3 $ON $TP
date -u
