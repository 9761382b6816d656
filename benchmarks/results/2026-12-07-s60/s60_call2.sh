#!/usr/bin/env bash
# Sixtieth session, call 2: ResNet-18 (GN) 224² b64 fp32 (1.38× memory): (a) the generated code around its DP peak's
# blocks (peak_memory.py, the DP backward module kept); (b) its layer3 per-sample terms as ghost terms
# (plan.AUTO_EXTRA_MEMORY 0.05 against the default 0.25): peak and step time against non-private torch.compile in
# the same call. Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s60/s60_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s60-call2
LIMIT=${LIMIT:-560}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
cr=benchmarks/results/2026-12-07-s60/cap_run.py
for cap in 0.25 0.05; do
    (( $(left) > 60 )) || break
    echo "== peak cap $cap $(date -u +%T)"
    mark
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-224-$cap timeout -k 5 110 python3 $cr $cap peak_memory.py --cudnn-benchmark \
        --config resnet18_224 --batch 64 --method dp --policy auto --top 24 > $OUT/$PREFIX-peak-$cap.log 2>&1
    echo "exit $?"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-224-$cap keep code-$cap
    tail -1 $OUT/$PREFIX-peak-$cap.log | python3 -c 'import json, sys
r = json.loads(sys.stdin.read()); print(r["peak_gib"], [(t["mib"], t["at"][:60]) for t in r["top"][:12]])'
done
cfg="--profile --amp fp32 --model resnet18_gn --size 224 --batch 64"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-224-np run "compile" 80 python3 benchmarks/dp_throughput.py $cfg --method compile
for cap in 0.25 0.05; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-224-$cap run "auto cap $cap" 100 python3 $cr $cap dp_throughput.py $cfg --policy auto
done
summary
date -u
