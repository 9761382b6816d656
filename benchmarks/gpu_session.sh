#!/usr/bin/env bash
# One GPU session on the 2×H200 machine, in three calls made back to back (the machine is given back 30 s
# after a call): GPU 1 trains CIFAR-10 for up to 20 minutes in the background while GPU 0 runs the test suite
# (call 1) and the benchmarks (call 2); call 3 waits for the training, scores it on the full test set and
# measures data-parallel throughput on both GPUs.
#   bash benchmarks/gpu_session.sh one      carry .whl .gpu (.gpu/data: cifar10-train.zip)
#   bash benchmarks/gpu_session.sh two      carry .whl .gpu (.gpu/peers: a copy of ../shared/peers)
#   bash benchmarks/gpu_session.sh three    carry .whl .gpu (.gpu/data: the full cifar10-test.zip)
# Settings: RUN (the CIFAR run's name), CIFAR_ARGS, SUITE_LIMIT, BENCH_BUDGET. Outputs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu-session} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
run=${RUN:-wrn-k4}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "GPUs", torch.cuda.device_count())'
date -u; git log --oneline -1 2>/dev/null

case ${1:?one, two or three} in
one)
    CUDA_VISIBLE_DEVICES=1 bash benchmarks/cifar_gpu.sh start "$run" --test-size mini \
        ${CIFAR_ARGS:---augmult 4 --bf16 --steps 1250 --time-limit 19.5 --eval-every 10}
    CUDA_VISIBLE_DEVICES=0 WORKERS=${WORKERS:-14} LIMIT=${SUITE_LIMIT:-480} bash .ci/gpu inductor
    CUDA_VISIBLE_DEVICES=1 bash benchmarks/cifar_gpu.sh poll "$run" 0
    ;;
two)
    CUDA_VISIBLE_DEVICES=0 timeout 120 python3 benchmarks/tied_memory.py --out "$OUT" 2>&1 | grep -v Warning | tail -12
    CUDA_VISIBLE_DEVICES=0 PEERS_DIR=$PWD/.gpu/peers BUDGET=${BENCH_BUDGET:-400} CORE=compile,dpcompile \
        PEERS=${PEERS-opacus,fastdp,private_vision} NAME=session bash benchmarks/suite_gpu.sh \
        ${BENCH_CONFIGS:-resnet18_32 wrn16_4_32 vit_s16_224}
    bash benchmarks/cifar_gpu.sh poll "$run" 0
    ;;
three)
    for _ in $(seq 1 ${WAIT_LIMIT:-24}); do  # the run stops itself at its time limit
        pgrep -f "examples/cifar10.py.*$run" >/dev/null || break
        sleep 5
    done
    bash benchmarks/cifar_gpu.sh poll "$run" 0
    CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/cifar-src:$PYTHONPATH python3 /tmp/cifar-src/examples/cifar10.py \
        --evaluate --size full --data .gpu/data --out "/tmp/cifar/$run"
    cp "/tmp/cifar/$run"/log.json "/tmp/cifar/$run"/accuracy.png "/tmp/cifar/$run"/stdout.log "$OUT"/ 2>/dev/null
    for model in ${DP_MODELS:-vit_s16}; do
        size=224; batch=64; [ "$model" = resnet50_gn ] && batch=32
        for n in 1 2; do
            timeout 240 torchrun --standalone --nproc-per-node=$n benchmarks/dp_throughput.py \
                --model "$model" --size $size --batch $batch 2>&1 | grep '^{' | tee -a "$OUT/dp_throughput.jsonl"
        done
    done
    ;;
esac
date -u
