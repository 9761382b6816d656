#!/usr/bin/env bash
# One GPU session on the 2×H200 machine, in three calls made back to back (the machine is given back 30 s
# after a call): GPU 1 trains CIFAR-10 in the background (a probe of its speed, then as many steps as fit
# CIFAR_MINUTES) while GPU 0 runs the test suite on CUDA with inductor, in two halves (calls 1 and 2), then the
# benchmarks (call 3); call 3 then waits for the training and scores it on the full test set.
#   bash benchmarks/gpu_session.sh one      carry .whl .gpu (.gpu/data: cifar10-train.zip)
#   bash benchmarks/gpu_session.sh two      carry .whl .gpu
#   bash benchmarks/gpu_session.sh three    carry .whl .gpu (.gpu/data: the full cifar10-test.zip; .gpu/peers)
#   bash benchmarks/gpu_session.sh scaling  (optional) data-parallel throughput, 1 and 2 GPUs ($DP_MODELS)
#   bash benchmarks/gpu_session.sh cifar2   (optional) the CIFAR-10 recipe on 2 GPUs; then cifar_gpu.sh poll
#   bash benchmarks/gpu_session.sh host     (one GPU) the CUDA-graph tests, then one-GPU step and host times of
#                                           $HOST_RUNS ("model:size:batch:method[:dp_throughput options]" ...)
#   bash benchmarks/gpu_session.sh diag     (optional) the link, all-reduce speed, phases and a profile of the
#                                           data-parallel step on 2 GPUs ($DP_MODELS)
# Settings: RUN (the CIFAR run's name), CIFAR_MINUTES, CIFAR_ARGS, SUITE_LIMIT, BENCH_BUDGET. Outputs go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu-session} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
run=${RUN:-wrn-ws-k4}
# The suite in two halves of about equal time on the H200 machine: the GPU-path files, then the rest.
SUITE_A="tests/test_adversarial.py tests/test_norm_bounds.py tests/test_odd_sizes.py tests/test_models.py
  tests/test_models_zoo.py tests/test_reparametrised.py tests/test_tied.py tests/test_gpu_paths.py
  tests/test_mixed_precision.py tests/test_hf_models.py tests/test_vision_libraries.py"
SUITE_B=$(ls tests/test_*.py | grep -v -F "$(echo $SUITE_A | tr ' ' '\n')" | tr '\n' ' ')
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__, "GPUs", torch.cuda.device_count())'
date -u; git log --oneline -1 2>/dev/null

case ${1:?one, two, three, cifar2, scaling or diag} in
one)
    CUDA_VISIBLE_DEVICES=1 bash benchmarks/cifar_gpu.sh fit "$run" "${CIFAR_MINUTES:-19}" --test-size mini \
        ${CIFAR_ARGS:---augmult 4 --bf16 --ws --groups 16 --micro-batches 8 --eval-every 10}
    CUDA_VISIBLE_DEVICES=0 WORKERS=${WORKERS:-14} LIMIT=${SUITE_LIMIT:-420} TESTS="${TESTS_A:-$SUITE_A}" \
        bash .ci/gpu inductor
    CUDA_VISIBLE_DEVICES=1 bash benchmarks/cifar_gpu.sh poll "$run" 0; cat "/tmp/cifar/$run/probe.log" | tail -3
    ;;
two)
    CUDA_VISIBLE_DEVICES=0 WORKERS=${WORKERS:-14} LIMIT=${SUITE_LIMIT:-480} TESTS="${TESTS_B:-$SUITE_B}" \
        bash .ci/gpu inductor
    bash benchmarks/cifar_gpu.sh poll "$run" 0
    ;;
three)
    CUDA_VISIBLE_DEVICES=0 PEERS_DIR=$PWD/.gpu/peers BUDGET=${BENCH_BUDGET:-300} CORE=compile,dpcompile AMPS=fp32 \
        PEERS=${PEERS-opacus_oop,fastdp} NAME=session bash benchmarks/suite_gpu.sh ${BENCH_CONFIGS:-resnet18_32 wrn16_4_32}
    for _ in $(seq 1 ${WAIT_LIMIT:-36}); do  # the run stops itself at its time limit
        pgrep -f "examples/cifar10.py.*$run" >/dev/null || break
        sleep 5
    done
    bash benchmarks/cifar_gpu.sh poll "$run" 0
    CUDA_VISIBLE_DEVICES=0 PYTHONPATH=/tmp/cifar-src:$PYTHONPATH python3 /tmp/cifar-src/examples/cifar10.py \
        --evaluate --size full --data .gpu/data --out "/tmp/cifar/$run"
    cp "/tmp/cifar/$run"/log.json "/tmp/cifar/$run"/accuracy.png "/tmp/cifar/$run"/stdout.log \
        "/tmp/cifar/$run"/probe.log "$OUT"/ 2>/dev/null
    ;;
host)  # host overhead on one GPU: CUDA graphs (and inductor settings) against the plain DP step
    DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor timeout ${HOST_TEST_LIMIT:-150} \
        python3 -m pytest -q -p no:cacheprovider tests/test_gpu_paths.py -k cuda_graphs 2>&1 | tee "$OUT/host-tests.log" | tail -5
    for spec in ${HOST_RUNS:-resnet50_gn:224:32:compile resnet50_gn:224:32:dp resnet50_gn:224:32:dp:--cuda-graphs}; do
        IFS=: read -r model size batch method opts <<< "$spec"
        echo "== $spec"
        timeout ${HOST_TIMEOUT:-200} python3 benchmarks/dp_throughput.py --model "$model" --size "$size" --batch "$batch" \
            --method "$method" ${opts//,/ } 2>&1 | tee -a "$OUT/host.log" | grep '^{' | tee -a "$OUT/host.jsonl"
    done
    ;;
diag)  # where the data-parallel step's time goes: the link, an all-reduce's speed, phases and a profile
    nvidia-smi topo -m
    [ -n "${DIAG_SKIP_PROFILE:-}" ] || for mb in 25 100; do
        timeout 120 torchrun --standalone --nproc-per-node=2 benchmarks/dp_throughput.py --allreduce-mb $mb 2>&1 \
            | grep '^{' | tee -a "$OUT/allreduce.jsonl"
    done
    [ -n "${DIAG_SKIP_PROFILE:-}" ] || for model in ${DP_MODELS:-resnet50_gn}; do
        batch=64; [ "$model" = resnet50_gn ] && batch=32
        for n in 2 1; do
            timeout 300 torchrun --standalone --nproc-per-node=$n benchmarks/dp_throughput.py --model "$model" \
                --size 224 --batch $batch --steps 10 --phases $([ $n = 2 ] && echo --profile) 2>&1 \
                | tee "$OUT/diag-$model-$n.log" | grep -v Warning | tail -60
        done
    done
    model=${DP_MODELS:-resnet50_gn}; model=${model%% *}; batch=64; [ "$model" = resnet50_gn ] && batch=32
    flags="--model $model --size 224 --batch $batch --steps 15"
    echo "two independent one-GPU runs at once (host contention, no communication):"
    for g in 0 1; do
        CUDA_VISIBLE_DEVICES=$g timeout 240 python3 benchmarks/dp_throughput.py $flags > "$OUT/alone-$g.log" 2>&1 &
    done
    wait; grep -h '^{' "$OUT"/alone-*.log | tee -a "$OUT/diag.jsonl"
    echo "one GPU, OMP_NUM_THREADS=1, nothing beside it:"
    OMP_NUM_THREADS=1 timeout 200 python3 benchmarks/dp_throughput.py $flags 2>&1 | grep '^{' | tee -a "$OUT/diag.jsonl"
    echo "non-private torch.compile, 1 GPU and DDP on 2:"
    for n in 1 2; do
        timeout 200 torchrun --standalone --nproc-per-node=$n benchmarks/dp_throughput.py $flags --method compile \
            2>&1 | grep '^{' | tee -a "$OUT/diag.jsonl"
    done
    ;;
cifar2)  # run 3's recipe on both GPUs (the same global batch, steps and σ), then `bash benchmarks/cifar_gpu.sh poll`
    LAUNCH="torchrun --standalone --nproc-per-node=2" bash benchmarks/cifar_gpu.sh start "$run-2gpu" \
        --test-size mini --augmult 4 --bf16 --ws --groups 16 --micro-batches 4 --eval-every 10 --steps 1977
    ;;
scaling)  # DP_BATCH: samples per GPU (default 32 for ResNet-50, 64 else); DP_METHODS: dp and/or compile;
          # DP_INDUCTOR: one inductor setting for the run, e.g. cpp_wrapper=True
    for model in ${DP_MODELS:-resnet50_gn}; do
        size=224; batch=64; [ "$model" = resnet50_gn ] && batch=32
        for method in ${DP_METHODS:-dp}; do
            for n in 1 2; do
                timeout ${DP_TIMEOUT:-240} torchrun --standalone --nproc-per-node=$n benchmarks/dp_throughput.py \
                    --model "$model" --size $size --batch ${DP_BATCH:-$batch} --method $method \
                    ${DP_INDUCTOR:+--inductor-config $DP_INDUCTOR} 2>&1 \
                    | grep '^{' | tee -a "$OUT/dp_throughput.jsonl"
            done
        done
    done
    ;;
esac
date -u
