#!/usr/bin/env bash
# CIFAR-10 training on the GPU machine across several calls (a run longer than one call's 10 minutes).
#   bash benchmarks/cifar_gpu.sh start NAME [examples/cifar10.py arguments ...]   # returns at once
#   bash benchmarks/cifar_gpu.sh fit NAME MINUTES [examples/cifar10.py arguments ...]  # the same, steps to fit
#   bash benchmarks/cifar_gpu.sh poll NAME [SECONDS]                              # waits, then reports
# `start` copies the code and the data to /tmp (a later call replaces the repository copy under a running
# process, so it must not run from there) and starts the run with setsid; `poll` sleeps SECONDS (default
# 540), prints the log's tail and copies log.json and accuracy.png to $OUT. `fit` first times PROBE_STEPS
# (default 20) steps of a throwaway run with the same arguments, then starts the run with as many --steps as fit
# MINUTES at that speed (σ calibrated for them; its first step counted as the probe's, --time-limit MINUTES as a
# guard); give no --steps of your own. Call `poll` again within
# 30 s of the previous call's end, or the machine (and the run) is given back.
# Data: DATA=dir holding cifar10-train.zip and cifar10-test.zip (default .gpu/data, git-ignored: carry
# it). The two zips are 62 MB of the 64 MiB a call carries, so carry only `.gpu` and `.whl` and keep
# the call's tree small (the tracked mini zips, 6 MB, do not fit beside them: move them out of the
# working tree for the `start` call and back after it).
# LAUNCH (default python3) starts the run: LAUNCH="torchrun --standalone --nproc-per-node=2" trains on 2 GPUs.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # this machine's rule
launch=${LAUNCH:-python3}
mode=${1:?start, fit or poll}; name=${2:?run name}; shift 2
run=/tmp/cifar/$name
case $mode in
start|fit)
    rm -rf /tmp/cifar-src && mkdir -p /tmp/cifar-src /tmp/cifar-data "$run"
    cp -r dpcompile passes examples pyproject.toml /tmp/cifar-src/
    cp "${DATA:-.gpu/data}"/cifar10-*.zip /tmp/cifar-data/
    source .ci/gpu-wheels
    nvidia-smi --query-gpu=name --format=csv,noheader; python3 -c 'import torch; print("torch", torch.__version__)'
    date -u; git log --oneline -1 2>/dev/null
    cd /tmp/cifar-src
    if [ "$mode" = start ]; then
        PYTHONPATH=/tmp/cifar-src:$PYTHONPATH PYTHONUNBUFFERED=1 setsid nohup \
            $launch examples/cifar10.py --data /tmp/cifar-data --out "$run" "$@" >"$run/stdout.log" 2>&1 </dev/null &
    else
        minutes=${1:?minutes}; shift
        PYTHONPATH=/tmp/cifar-src:$PYTHONPATH PYTHONUNBUFFERED=1 setsid nohup bash -c '
            run=$1 minutes=$2 probe=$run-probe; shift 2
            python3 examples/cifar10.py --data /tmp/cifar-data --out "$probe" "$@" --steps 100000 --sigma 2 \
                --stop-after "${PROBE_STEPS:-20}" --eval-every 0.4 --ema 0 >"$run/probe.log" 2>&1
            steps=$(python3 -c "import json, sys
r = json.load(open(sys.argv[1]))[\"epochs\"]
(s0, m0), (s1, m1) = (r[0][\"step\"], r[0][\"minutes\"]), (r[-1][\"step\"], r[-1][\"minutes\"])
per_step = (m1 - m0) / (s1 - s0)
print(int((float(sys.argv[2]) - m0 - 0.3) / per_step), file=sys.stdout)
print(f\"probe: {per_step * 60:.3f} s/step, first {m0 * 60:.0f} s\", file=sys.stderr)" "$probe/log.json" "$minutes")
            echo "fit: $steps steps in $minutes min" >>"$run/probe.log"
            exec python3 examples/cifar10.py --data /tmp/cifar-data --out "$run" "$@" --steps "$steps" \
                --time-limit "$minutes"' fit "$run" "$minutes" "$@" >"$run/stdout.log" 2>&1 </dev/null &
    fi
    sleep 5; tail -c 1000 "$run/stdout.log"
    ;;
poll)
    sleep "${1:-540}"
    tail -c 1500 "$run/stdout.log" | tr '\r' '\n' | grep -v '^training:' | tail -20
    cp "$run"/log.json "$run"/accuracy.png "${OUT:-/tmp}"/ 2>/dev/null
    pgrep -f "examples/cifar10.py.*$name" >/dev/null && echo "running" || echo "finished"
    ;;
esac
