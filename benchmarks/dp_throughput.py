"""Data-parallel throughput of a dpcompile training step: samples per second per GPU, one process per GPU.

    python benchmarks/dp_throughput.py --model resnet50_gn --size 224 --batch 32             # one GPU
    torchrun --nproc-per-node=2 benchmarks/dp_throughput.py --model resnet50_gn --size 224 --batch 32

Each rank trains on its own synthetic batch of --batch samples (the per-GPU batch: weak scaling, as a
Poisson shard of a global batch would be) with SGD, noise on, inductor by default; the step is
loss.backward() (clip, all-reduce of the clipped sums, noise once) and opt.step(). Time per step: median
over --steps steps after --warmup (the first includes compilation), bracketed by a device synchronise and
a barrier. Rank 0 prints one JSON line: per-GPU samples/s, the world size, card, torch version and date.
Efficiency = per-GPU samples/s with N GPUs ÷ that with one (run both).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import models as zoo  # noqa: E402

import dpcompile  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50_gn", help="a builder in examples/models.py (num_classes=10)")
    p.add_argument("--size", type=int, default=224, help="image side")
    p.add_argument("--batch", type=int, default=32, help="samples per GPU per step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--policy", default="mixed")
    p.add_argument("--backend", default="inductor", choices=["inductor", "eager"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def build(name: str, size: int) -> torch.nn.Module:
    builder = getattr(zoo, name)
    return builder(num_classes=10, image_size=size) if name.startswith("vit") else builder(10)


def sync(device: torch.device, world: int) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if world > 1:
        dist.barrier()


def main(argv=None) -> dict:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.manual_seed(0)
    model = build(args.model, args.size).to(device)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, sample_rate=0.01,
                             expected_batch_size=args.batch * world, policy=args.policy, backend=args.backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(1 + rank)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    times = []
    for step in range(args.warmup + args.steps):
        sync(device, world)
        start = time.perf_counter()
        F.cross_entropy(dp(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device, world)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    result = {"model": args.model, "size": args.size, "batch_per_gpu": args.batch, "world": world,
              "step_ms": round(1000 * step_s, 2), "samples_per_s_per_gpu": round(args.batch / step_s, 1),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": datetime.date.today().isoformat(), "policy": args.policy,
              "backend": args.backend}
    if rank == 0:
        print(json.dumps(result), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
