#!/usr/bin/env bash
# Fifty-ninth session, call 2: where ResNet-50 (GN) 224² b32 fp32's first step goes (125 s under `auto` against
# compile's 54 s, fifty-eighth session): the first step of non-private torch.compile and of dpcompile `auto`, each from
# a cold inductor cache under py-spy (sampling the main process and its compile workers' threads, idle included, 20 Hz;
# the wheel carried in .whl/tools/), with Dynamo's per-phase compile times printed at exit. Run alone from the
# repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s59/s59_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s59-call2
LIMIT=${LIMIT:-420}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --target /tmp/spy .whl/tools/py_spy-*.whl
ct=benchmarks/results/2026-12-07-s59/with_compile_times.py
cfg="--amp fp32 --model resnet50_gn --size 224 --batch 32 --steps 3 --warmup 1"
for method in ${METHODS:-dp compile}; do
    (( $(left) > 60 )) || break
    echo "== $method $(date -u +%T)"
    extra=$([ $method = dp ] && echo "--policy auto" || echo "--method compile")
    cap=$([ $method = dp ] && echo 220 || echo 110)
    (( cap > $(left) )) && cap=$(left)
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$method timeout -k 5 $cap /tmp/spy/bin/py-spy record -r 20 --idle --threads \
        --subprocesses -f raw -o $OUT/$PREFIX-$method.spy.txt -- python3 $ct dp_throughput.py $cfg $extra \
        > $OUT/$PREFIX-$method.log 2>&1
    echo "exit $?"
    grep -A40 "^compile_times" $OUT/$PREFIX-$method.log | cut -c1-200
    grep '"first_step_s"' $OUT/$PREFIX-$method.log | tail -1 | cut -c1-400
done
date -u
