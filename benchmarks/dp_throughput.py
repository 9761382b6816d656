"""Data-parallel throughput of a dpcompile training step: samples per second per GPU, one process per GPU.

    python benchmarks/dp_throughput.py --model resnet50_gn --size 224 --batch 32             # one GPU
    torchrun --nproc-per-node=2 benchmarks/dp_throughput.py --model resnet50_gn --size 224 --batch 32

Each rank trains on its own synthetic batch of --batch samples (the per-GPU batch: weak scaling, as a
Poisson shard of a global batch would be) with SGD, noise on, inductor by default; the step is
loss.backward() (clip, all-reduce of the clipped sums, noise once) and opt.step(). Time per step: median
over --steps steps after --warmup (the first includes compilation), bracketed by a device synchronise and
a barrier; host_ms is the part until the host has queued the step's work (close to the step time: the host,
not the GPU, is the limit). Rank 0 prints one JSON line: per-GPU samples/s, the world size, card, torch
version and date. Efficiency = per-GPU samples/s with N GPUs ÷ that with one (run both). `--method compile`
times non-private torch.compile instead (under DDP on several ranks): the same machine's reference scaling.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as zoo  # noqa: E402
from bench_configs import CONFIGS  # noqa: E402  (the suite's models, as bench.py builds them)

import dpcompile  # noqa: E402
from dpcompile.config import AUTO_EXTRA_MEMORY  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50_gn",
                   help="a builder in examples/models.py; a suite config's (model, size) as the suite builds it")
    p.add_argument("--size", type=int, default=224, help="image side")
    p.add_argument("--batch", type=int, default=32, help="samples per GPU per step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--policy", default="mixed")
    p.add_argument("--method", default="dp", choices=["dp", "compile"],
                   help="dp: dpcompile; compile: non-private torch.compile (DDP on several ranks), the reference")
    p.add_argument("--backend", default="inductor", choices=["inductor", "eager"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--phases", action="store_true",
                   help="also time forward, backward and optimizer step apart (a device sync between them)")
    p.add_argument("--profile", action="store_true",
                   help="rank 0 profiles 5 steps after the timed ones, prints the top kernels and CPU ops, and "
                        "adds each matrix product's time by operand shapes to the result ('products')")
    p.add_argument("--amp", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: the forward under torch.autocast(bfloat16), the loss in fp32 (as bench.py --amp bf16)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="dp: cuda_graphs=True; compile: mode='reduce-overhead' (CUDA graphs for the compiled graphs)")
    p.add_argument("--per-sample-tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="dp: per_sample_tf32=True/False (TF32 per-sample products); default None, as PyTorch's settings")
    p.add_argument("--ghost-tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="dp: ghost_tf32=True/False (ghost terms' clipped sums in TF32); default None, as PyTorch's settings")
    p.add_argument("--auto-extra-memory", type=float, default=AUTO_EXTRA_MEMORY, metavar="SHARE",
                   help="dp: auto_extra_memory (policy auto's memory cap, a share of the saved tensors); default "
                        f"{AUTO_EXTRA_MEMORY}, the library's")
    p.add_argument("--poisson", type=int, default=0, metavar="N",
                   help="each step's batch size drawn as Poisson sampling of a dataset of N samples draws it "
                        "(Binomial(N, batch/N), seeded), as a DP data loader hands them out, instead of --batch every "
                        "step: what CUDA graphs (one recording per new size) and recompiles cost in training; adds "
                        "the sizes seen, the steps with a new size and their median to the result")
    p.add_argument("--batch-bucket", type=int, default=None, metavar="K",
                   help="dp: batch_bucket=K (each batch padded with zero samples to a multiple of K rows)")
    add_graph_options(p)
    p.add_argument("--dynamic", action="store_true",
                   help="compile: the batch dimension marked dynamic (a symbolic batch size, as in dpcompile's graphs)")
    p.add_argument("--allreduce-mb", type=float, default=0.0,
                   help="instead of training, time an all-reduce of this many MB of float32 (median of 20)")
    return p.parse_args(argv)


def build(name: str, size: int) -> tuple[torch.nn.Module, int]:
    """(model, classes). A suite config (bench_configs.CONFIGS, e.g. resnet18_gn at 224 is `resnet18_224`) is built
    as the suite defines it: its stem (ImageNet's at 224², the small-input one at 32²) and its classes. Any other
    builder of examples/models.py with 10 classes, a ResNet with the small-input stem only at 64² and below."""
    suite = CONFIGS.get(f"{name.removesuffix('_gn')}_{size}")
    if suite is not None and suite.input_shape == (3, size, size):
        return suite.build(), suite.num_classes
    builder = getattr(zoo, name)
    if name.startswith("vit"):
        return builder(num_classes=10, image_size=size), 10
    if name.startswith("resnet"):
        return builder(10, small_input=size <= 64), 10
    return builder(10), 10


def poisson_sizes(dataset: int, batch: int, steps: int, rank: int) -> list[int]:
    """`steps` batch sizes of Poisson sampling at rate batch/dataset over `dataset` samples (seeded per rank); none
    where dataset is 0 (a fixed batch). A size of 0 is drawn again: the timing is of training steps."""
    if not dataset:
        return []
    g = torch.Generator().manual_seed(1234 + rank)
    draw = lambda: int(torch.binomial(torch.tensor(float(dataset)), torch.tensor(batch / dataset),  # noqa: E731
                                      generator=g))
    sizes = []
    while len(sizes) < steps:
        b = draw()
        if b:
            sizes.append(b)
    return sizes


def sync(device: torch.device, world: int) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if world > 1:
        dist.barrier()


PROFILED_STEPS = 5
PRODUCTS = ("aten::bmm", "aten::mm", "aten::addmm", "aten::baddbmm")


def matrix_products(prof) -> list[dict]:
    """Each matrix product's time per step by operand shapes (profiled without CUDA graphs), largest first. The
    shapes tell the DP step's products apart: per-sample gradients are batched over B·groups, ghost Gram matrices
    have T × T outputs, a ghost clipped sum on CUDA has groups as its batch and B·T as its inner dim."""
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key in PRODUCTS:
            device_us = getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)
            rows.append({"op": e.key, "shapes": str(e.input_shapes), "calls_per_step": e.count / PROFILED_STEPS,
                         "device_ms": round(device_us / 1000 / PROFILED_STEPS, 3),
                         "cpu_ms": round(e.cpu_time_total / 1000 / PROFILED_STEPS, 3)})
    return sorted(rows, key=lambda r: (-r["device_ms"], -r["cpu_ms"]))


SOURCE_NODES = re.compile(r"^#\s*(?:Topologically Sorted|Unsorted) Source Nodes:\s*\[(.*?)\]")
KERNEL_DEFINITION = re.compile(r"^((?:triton|cpp)_\w+) = async_compile\.")


def kernel_sources(paths=None) -> dict[str, list[str]]:
    """Each generated kernel's source nodes, by kernel name, from inductor's generated modules (every one this process
    loaded, or the files at paths): the '# ... Source Nodes: [...]' line of the comment block that inductor writes
    right before a Triton kernel's definition (CPU kernels have none). The DP passes name the nodes they emit after
    the stage and the parameter (dp_norm_sq_<param>_..., dp_clipped_<param>_..., dp_per_sample_<param>_...) and
    tag them as backward nodes, so a kernel's sources say which layer's norms, clipped sum or per-sample gradient it
    computes. Names repeat across modules (each graph numbers its kernels from 0), as in the profiler's table, so
    their sources are merged."""
    if paths is None:
        from torch._inductor.codecache import PyCodeCache
        paths = sorted({getattr(m, "__file__", None) for m in PyCodeCache.modules} - {None})
    sources: dict[str, list[str]] = {}
    for path in paths:
        block: list[str] = []  # the source nodes named in the comment block above the current line
        for line in Path(path).read_text().splitlines():
            if line.startswith("#"):
                found = SOURCE_NODES.match(line)
                if found:
                    block = [n.strip() for n in found.group(1).split(",") if n.strip()]
                continue
            definition = KERNEL_DEFINITION.match(line)
            if definition and block:
                known = sources.setdefault(definition.group(1), [])
                known.extend(n for n in block if n not in known)
            block = []
    return sources


def top_kernels(on_device, sources: dict[str, list[str]], limit: int = 15) -> list[dict]:
    """The generated kernels that took the most device time, per step, with their source nodes (kernel_sources);
    on_device: the profiler's device events."""
    rows = [{"kernel": e.key, "device_ms": round(e.self_device_time_total / 1000 / PROFILED_STEPS, 3),
             "calls_per_step": e.count / PROFILED_STEPS, "sources": len(sources[e.key]),
             "first_sources": sources[e.key][:6]}
            for e in on_device if e.key in sources]
    return sorted(rows, key=lambda r: -r["device_ms"])[:limit]


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
    if args.allreduce_mb:
        return allreduce_time(args, device, world, rank)
    with graph_options(args):
        return train(args, device, world, rank)


def add_graph_options(p: argparse.ArgumentParser) -> None:
    """The options of how the run's graphs are compiled (here and in peak_memory.py): graph_options applies them."""
    p.add_argument("--inductor-config", action="append", default=[], metavar="KEY=VALUE",
                   help="an inductor setting for every compiled graph of the run, e.g. cpp_wrapper=True (repeatable)")
    p.add_argument("--ghost-on-grid", action="store_true",
                   help="dp: ghost convolutions over the padded grid (passes.rules.conv.GHOST_ON_GRID; off by default)")
    p.add_argument("--fused-gram-dtypes", default=None, metavar="DTYPES",
                   help="dp: the operand dtypes whose ghost Gram sums run fused (passes.rules.bounds.FUSED_GRAM_DTYPES, "
                        "comma-separated: bfloat16,float32; 'none' for none), instead of the default")
    p.add_argument("--fused-gram-convs", action="store_true",
                   help="dp: ghost convolutions' Gram sums fused too, on CUDA (passes.rules.conv.FUSED_GRAM_CONV_DEVICES; "
                        "off by default)")
    p.add_argument("--grouped-tf32-convs", action="store_true",
                   help="dp: TF32 per-sample convolution terms in the grouped form on cuDNN's TF32, on CUDA "
                        "(passes.rules.conv.GROUPED_TF32_CONV_DEVICES; off by default)")
    p.add_argument("--foreach-release", action="store_true",
                   help="dp: the released gradients as one horizontally fused group for inductor, on CUDA "
                        "(passes.rewrite.FOREACH_RELEASE_DEVICES; off by default)")


@contextlib.contextmanager
def graph_options(args: argparse.Namespace):
    """add_graph_options' settings for the captures and compilations inside (passes.rules.conv.GHOST_ON_GRID,
    FUSED_GRAM_CONV_DEVICES, GROUPED_TF32_CONV_DEVICES, bounds.FUSED_GRAM_DTYPES and rewrite.FOREACH_RELEASE_DEVICES
    are read as each capture is rewritten), put back after."""
    from dpcompile.passes import rewrite
    from dpcompile.passes.rules import bounds, conv
    before = (conv.GHOST_ON_GRID, conv.FUSED_GRAM_CONV_DEVICES, conv.GROUPED_TF32_CONV_DEVICES,
              bounds.FUSED_GRAM_DTYPES, rewrite.FOREACH_RELEASE_DEVICES)
    conv.GHOST_ON_GRID = args.ghost_on_grid
    if args.fused_gram_convs:
        conv.FUSED_GRAM_CONV_DEVICES = ("cuda",)
    if args.grouped_tf32_convs:
        conv.GROUPED_TF32_CONV_DEVICES = ("cuda",)
    if args.foreach_release:
        rewrite.FOREACH_RELEASE_DEVICES = ("cuda",)
    if args.fused_gram_dtypes is not None:
        names = [] if args.fused_gram_dtypes == "none" else args.fused_gram_dtypes.split(",")
        bounds.FUSED_GRAM_DTYPES = tuple(getattr(torch, name) for name in names)
    try:
        with inductor_config.patch(inductor_settings(args.inductor_config)):
            yield
    finally:
        (conv.GHOST_ON_GRID, conv.FUSED_GRAM_CONV_DEVICES, conv.GROUPED_TF32_CONV_DEVICES,
         bounds.FUSED_GRAM_DTYPES, rewrite.FOREACH_RELEASE_DEVICES) = before


def inductor_settings(pairs: list[str]) -> dict:
    """{"cpp_wrapper": True, ...} from ["cpp_wrapper=True", ...] (values as Python literals)."""
    import ast
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        settings[key.strip()] = ast.literal_eval(value.strip())
    return settings


def train(args, device: torch.device, world: int, rank: int) -> dict:
    torch.manual_seed(0)
    model, classes = build(args.model, args.size)
    model = model.to(device)
    if args.method == "dp":
        dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, sample_rate=0.01,
                                 expected_batch_size=args.batch * world, policy=args.policy, backend=args.backend,
                                 cuda_graphs=args.cuda_graphs, batch_bucket=args.batch_bucket,
                                 per_sample_tf32=args.per_sample_tf32, ghost_tf32=args.ghost_tf32,
                                 auto_extra_memory=args.auto_extra_memory)
    else:  # the non-private reference: torch.compile, under DDP on several ranks
        from torch.nn.parallel import DistributedDataParallel
        dp = torch.compile(DistributedDataParallel(model) if world > 1 else model, backend=args.backend,
                           mode="reduce-overhead" if args.cuda_graphs else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(1 + rank)
    sizes = poisson_sizes(args.poisson, args.batch, args.warmup + args.steps + PROFILED_STEPS, rank)
    most = max(sizes) if sizes else args.batch
    x_all = torch.randn(most, 3, args.size, args.size, device=device)
    y_all = torch.randint(0, classes, (most,), device=device)
    if args.dynamic and args.method == "compile":
        torch._dynamo.mark_dynamic(x_all, 0)
    times, phases, host = [], [], []  # host: until the step's work is queued (≈ the step: the host is the limit)
    seen_steps, new_size = [], []  # each step's batch size; new_size[i]: timed step i was the first at its size

    def step() -> None:
        b = sizes[len(seen_steps)] if sizes else args.batch
        new_size.append(b not in seen_steps)
        seen_steps.append(b)
        x, y = (x_all[:b], y_all[:b]) if sizes else (x_all, y_all)
        marks = [time.perf_counter()]
        with torch.autocast(device.type, torch.bfloat16, enabled=args.amp == "bf16"):
            out = dp(x)
        loss = F.cross_entropy(out.float(), y)
        if args.phases:
            sync(device, 1)
            marks.append(time.perf_counter())
        loss.backward()
        if args.phases:
            sync(device, 1)
            marks.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        queued = time.perf_counter()
        sync(device, world)
        marks.append(time.perf_counter())
        times.append(marks[-1] - marks[0])
        phases.append([b - a for a, b in zip(marks, marks[1:])])
        host.append(queued - marks[0])

    for i in range(args.warmup + args.steps):
        if i == args.warmup:  # the warm-up steps (compilation) are not timed
            times.clear(), phases.clear(), host.clear(), new_size.clear()
            if device.type == "cuda":  # the peak of the timed steps: what training holds, not what compiling did
                torch.cuda.reset_peak_memory_stats(device)
        sync(device, world)
        step()
        if i == 0:
            first_step_s = times[0]  # the first step, compilation included
    step_s = statistics.median(times)
    result = {"model": args.model, "size": args.size, "classes": classes, "batch_per_gpu": args.batch, "world": world,
              "step_ms": round(1000 * step_s, 2), "samples_per_s_per_gpu": round(args.batch / step_s, 1),
              "first_step_s": round(first_step_s, 1),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "policy": args.policy if args.method == "dp" else "non-private", "amp": args.amp,
              "backend": args.backend, "cuda_graphs": args.cuda_graphs,
              "per_sample_tf32": args.per_sample_tf32, "ghost_tf32": args.ghost_tf32, "dynamic": args.dynamic,
              "ghost_on_grid": args.ghost_on_grid, "fused_gram_dtypes": args.fused_gram_dtypes,
              "fused_gram_convs": args.fused_gram_convs, "grouped_tf32_convs": args.grouped_tf32_convs,
              "foreach_release": args.foreach_release, "batch_bucket": args.batch_bucket, "auto_extra_memory": args.auto_extra_memory,
              "inductor_config": inductor_settings(args.inductor_config)}
    result["host_ms"] = round(1000 * statistics.median(host), 2)
    if sizes:  # the timed steps: all of them, and those at a size seen before (no new recording or compile)
        median_ms = lambda ts: round(1000 * statistics.median(ts), 2) if ts else None  # noqa: E731
        result["poisson"] = {"dataset": args.poisson, "sizes_seen": len(set(seen_steps)),
                             "new_size_steps": sum(new_size), "mean_ms": round(1000 * statistics.fmean(times), 2),
                             "new_size_median_ms": median_ms([t for t, new in zip(times, new_size) if new]),
                             "repeat_median_ms": median_ms([t for t, new in zip(times, new_size) if not new])}
    if device.type == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    if args.phases:
        result["phases_ms"] = dict(zip(("forward", "backward", "step"),
                                       (round(1000 * statistics.median(col), 2) for col in zip(*phases))))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(PROFILED_STEPS):
                step()
        if rank == 0:
            table = prof.key_averages()
            print(table.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
            print(table.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=70))
            result["products"] = matrix_products(prof)
            # the device's busy time a step (every kernel and copy): what a step costs where the host is not the bound
            cpu = torch.autograd.DeviceType.CPU  # the events the table's "Self CUDA time total" counts:
            on_device = [e for e in table if e.device_type != cpu and not getattr(e, "is_user_annotation", False)]
            device_us = sum(e.self_device_time_total for e in on_device)
            result["kernel_ms_per_step"] = round(device_us / 1000 / PROFILED_STEPS, 3)
            result["kernels"] = top_kernels(on_device, kernel_sources())
    if rank == 0:
        print(json.dumps(result), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return result


def allreduce_time(args, device: torch.device, world: int, rank: int) -> dict:
    """Median time of an all-reduce of --allreduce-mb MB of float32 (one flat tensor), and its bus bandwidth."""
    flat = torch.ones(int(args.allreduce_mb * 2**20 / 4), device=device)
    times = []
    for i in range(25):
        sync(device, world)
        start = time.perf_counter()
        if world > 1:
            dist.all_reduce(flat)
        sync(device, 1)
        if i >= 5:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    result = {"allreduce_mb": args.allreduce_mb, "world": world, "ms": round(1000 * seconds, 3),
              "busbw_GBps": round(2 * (world - 1) / world * flat.numel() * 4 / seconds / 1e9, 1),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": datetime.date.today().isoformat()}
    if rank == 0:
        print(json.dumps(result), flush=True)
    if world > 1:
        dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
