"""What is live at a training step's memory peak, on the GPU: the largest allocations then, with the line of code
(inductor's generated module or the model's) that made each.

    python benchmarks/peak_memory.py --model wrn16_4 --size 32 --batch 256 --method dp --policy auto
    python benchmarks/peak_memory.py --model wrn16_4 --size 32 --batch 256 --method compile
    python benchmarks/peak_memory.py --config resnet18_224 --batch 64 --method dp   (a suite config's own model)
    ... --cudnn-benchmark (as the suite runs)   ... --ghost-on-grid (passes.rules.conv.GHOST_ON_GRID, off by default)
    ... --inductor-config force_layout_optimization=True (inductor settings for every compiled graph)

After --warmup steps (compilation included) one step runs under torch.cuda.memory._record_memory_history; its
allocation trace is replayed (alloc / free events) to find the peak of allocated bytes and the blocks live at it.
Prints one JSON line: the memory allocated before the step (parameters, optimizer state), the peak (that plus the
trace's peak; torch.cuda.max_memory_allocated of the same step beside it), where the peak falls (the line of the
allocation that reached it, and the share of the step's allocations made by then: near 1, the backward's end), and
the --top largest blocks the step allocated that are live at the peak (MiB, the allocating line). The difference
between dpcompile's and non-private training's lists is what a memory target has to remove. CUDA only (the
allocator's history); `peak_live` is the replay, a plain function. --auto-extra-memory SHARE sets `auto`'s memory
cap (dpcompile's auto_extra_memory).
"""
from __future__ import annotations

import argparse
import datetime
import json
import linecache
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_configs import CONFIGS, make_batch  # noqa: E402
from dp_throughput import add_graph_options, build, graph_options, inductor_settings  # noqa: E402

import dpcompile  # noqa: E402
from dpcompile.config import AUTO_EXTRA_MEMORY  # noqa: E402


def peak_live(events: list[dict]) -> tuple[int, list[dict], dict, float]:
    """(peak allocated bytes, the alloc events live at the first time it is reached, the alloc that reached it, and
    where in the step that was: the share of the step's allocs made by then) from an allocator trace in order:
    'alloc' adds a block at addr, 'free_requested' removes it (the caching allocator's view of allocated memory, as
    max_memory_allocated counts it); other actions (segment maps, snapshots) are ignored. Where the peak falls says
    which values can move it: a per-sample gradient kept for its clipped sum counts only if it is live there."""
    live: dict[int, dict] = {}
    total = peak = allocs = 0
    at_peak: list[dict] = []
    reached, when = {}, 0
    for event in events:
        action = event.get("action")
        if action == "alloc":
            allocs += 1
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak, reached, when = total, list(live.values()), event, allocs
        elif action == "free_requested" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, sorted(at_peak, key=lambda e: -e["size"]), reached, when / max(allocs, 1)


def origin(frames: list[dict], generated: str = "") -> str:
    """The allocating line: the first Python frame in inductor's generated code (under `generated`, its cache
    directory, or a path naming torchinductor), else the first Python frame outside torch. The trace's C++ frames
    (stacks="all"), whose files read "??" where the build has no symbols, are passed over: taken for a frame outside
    torch, they named every block "??:0" (fifty-ninth session, cache directories set per run)."""
    def line(f):
        return f"{Path(f['filename']).name}:{f['line']} {linecache.getline(f['filename'], f['line']).strip()[:120]}"
    python = [f for f in frames if f["filename"].endswith(".py")]
    for f in python:
        if "torchinductor" in f["filename"] or (generated and f["filename"].startswith(generated)):
            return line(f)
    for f in python:
        if "/torch/" not in f["filename"]:
            return line(f)
    return line(frames[0]) if frames else "?"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrn16_4")
    p.add_argument("--config", default="", help="a bench_configs suite config (its model, input and classes) "
                   "instead of --model and --size, e.g. resnet18_224 (ImageNet stem)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--method", default="dp", choices=["dp", "compile"])
    p.add_argument("--policy", default="auto")
    p.add_argument("--auto-extra-memory", type=float, default=AUTO_EXTRA_MEMORY, metavar="SHARE",
                   help=f"dp: auto_extra_memory (policy auto's memory cap); default {AUTO_EXTRA_MEMORY}, the library's")
    p.add_argument("--amp", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark = True (as the suite)")
    add_graph_options(p)
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    with graph_options(args):
        return profile_step(args)


def profile_step(args) -> dict:
    device = torch.device("cuda")
    torch.manual_seed(0)
    size = args.size
    if args.config:
        cfg = CONFIGS[args.config]
        model = cfg.build().to(device)
        x, y = make_batch(cfg, device, args.batch)
        size = cfg.input_shape[-1]  # the config's own input
    else:
        model, classes = build(args.model, args.size)
        model = model.to(device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        y = torch.randint(0, classes, (args.batch,), device=device)
    if args.method == "dp":
        net = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=args.batch,
                                  policy=args.policy, auto_extra_memory=args.auto_extra_memory)
    else:
        net = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()  # parameters, optimizer state: not in the step's trace
    torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    step()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    events = [e for trace in snapshot["device_traces"] for e in trace]
    peak, live, reached, when = peak_live(events)
    generated = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")  # unset: inductor's default, which names torchinductor
    result = {"model": args.config or args.model, "size": size, "batch": args.batch, "method": args.method,
              "policy": args.policy if args.method == "dp" else "", "amp": args.amp,
              "auto_extra_memory": args.auto_extra_memory, "cudnn_benchmark": args.cudnn_benchmark,
              "ghost_on_grid": args.ghost_on_grid,
              "inductor_config": inductor_settings(args.inductor_config),
              "before_step_gib": round(before / 2**30, 3), "peak_gib": round((before + peak) / 2**30, 3),
              "max_memory_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
              "live_blocks": len(live), "peak_reached_by": origin(reached.get("frames", []), generated),
              "peak_after_allocs": round(when, 3),
              "top": [{"mib": round(e["size"] / 2**20, 1), "at": origin(e.get("frames", []), generated)}
                      for e in live[:args.top]],
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
