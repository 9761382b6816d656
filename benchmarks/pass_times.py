"""Where the first (capturing) step's time goes: dpcompile's own passes, per pass, and inductor's lowering.

    python benchmarks/pass_times.py [--models resnet50_gn,vit_s16,wrn16_4] [--size 64] [--batch 2]
    python benchmarks/pass_times.py --models resnet50_gn --size 224 --batch 32 --device cuda --backend inductor
    python benchmarks/pass_times.py --models resnet50_gn --snippets 8   (the rewrite's snippet traces, by function)

Runs each model's first step (by default with backend="eager", no inductor, on the CPU) and reports the time
spent in the safety pass (graph check), the numerical sample-independence check (two eager runs of the forward
graph), each pass of the pipeline (shapes, plan, rewrite), with --backend inductor the lowering of the forward
and of the DP backward graph, and the whole first step. Times are the process's CPU time (--clock process,
the default: dpcompile's passes run in this process) or wall time (--clock wall: what the first step costs
with inductor, whose kernel compilation runs in worker processes). This is compile time, which runs on the
host whatever the device; it is not a training-speed figure. --snippets N adds the snippet traces the rewrite
makes (passes.emit: one make_fx trace per distinct rule, shape and dtype), their traced nodes and time, and the N
emitting functions that took longest. --phases (with --backend inductor) splits each graph's lowering into inductor's
phases (fake propagation, post-grad passes, lowering to IR, scheduling and fusion, kernel code generation, waiting for
the kernel compile workers) and adds the autotuning of the first runs: which of them the DP nodes' count drives, and
which the count of distinct kernels. --nodes counts the rewritten backward's nodes by stage (the emitted names' prefixes:
norm bounds, per-sample gradients, clipped sums, clip factors, noise and normalisation, the model's own) and, with
--backend inductor, the kernels inductor generated for each graph (none where its cache served the graph).
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch._inductor.metrics
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import models as zoo  # noqa: E402

import dpcompile  # noqa: E402
from dpcompile import passes  # noqa: E402
from dpcompile.passes import emit  # noqa: E402
from dpcompile.backend import DPBackend  # noqa: E402

SPENT: dict[str, float] = defaultdict(float)
# --phases: inductor's phases per graph ("forward", "backward"; "first runs" for autotuning, which a kernel's first
# call does), each (module, attribute path, label); looked up when instrumented, so a torch without one leaves it out
PHASES = (("torch._inductor.compile_fx", "fake_tensor_prop", "fake propagation"),
          ("torch._inductor.compile_fx", "_recursive_post_grad_passes", "post-grad passes"),
          ("torch._inductor.graph", "GraphLowering.run", "lowering to IR"),
          ("torch._inductor.scheduler", "Scheduler.__init__", "scheduling and fusion"),
          ("torch._inductor.scheduler", "Scheduler.codegen", "kernel code generation"),
          ("torch._inductor.async_compile", "AsyncCompile.wait", "waiting for kernel compiles"),
          ("torch._inductor.runtime.triton_heuristics", "CachingAutotuner.benchmark_all_configs", "autotuning"))
PHASE_SPENT: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
LOWERING: list[str] = []  # the graph being lowered (innermost last)
KERNELS: dict[str, int] = defaultdict(int)  # --nodes: kernels inductor generated per graph
NODES: dict[str, int] = {}  # --nodes: the last first step's DP backward, call_function nodes per stage
# --nodes: the DP backward's stages by their emitted names' prefixes (passes.rewrite), the first that matches
STAGES = (("dp_norm_sq_", "norm bounds"), ("dp_margin_", "norm bounds"), ("dp_per_sample_", "per-sample gradients"),
          ("dp_clipped_", "clipped sums"), ("dp_clip_factor", "clip factors"), ("dp_kept_", "clip factors"),
          ("dp_certified", "clip factors"), ("dp_dropped", "clip factors"), ("dp_noise", "noise and normalisation"),
          ("dp_grad", "noise and normalisation"), ("dp_", "other DP"), ("", "the model's own"))
# per emitting function (its qualified name): [snippet traces, traced nodes, seconds]; the rewrite's main cost
SNIPPETS: dict[str, list] = defaultdict(lambda: [0, 0, 0.0])
MAKE_FX: list[str] = []  # the emitting functions whose trace emit.record left to make_fx
CLOCK = {"process": time.process_time, "wall": time.perf_counter}
clock = time.process_time


def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += clock() - start
    return wrapper


@contextlib.contextmanager
def instrumented():
    """Every pipeline pass, the safety pass and the lowering timed (the backend looks them up at call time),
    as they were afterwards."""
    saved = [(passes, "PIPELINE"), (passes, "check_sample_independence"), (passes.safety.SampleCheck, "check"),
             (DPBackend, "lower"), (emit, "trace_snippet"), (emit, "make_fx")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in saved]
    lower = DPBackend.lower

    def timed_lower(self, gm, example_inputs, kwargs):
        name = "lower backward" if kwargs.get("is_backward") else "lower forward"
        LOWERING.append(name.split()[1])
        generated = torch._inductor.metrics.generated_kernel_count
        try:
            return timed(name, lower)(self, gm, example_inputs, kwargs)
        finally:
            LOWERING.pop()
            KERNELS[name.split()[1]] += torch._inductor.metrics.generated_kernel_count - generated
    for module_name, path, label in PHASES:
        found = phase_owner(module_name, path)
        if found is not None:
            owner, attr = found
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, timed_phase(label, getattr(owner, attr)))
    passes.PIPELINE = tuple(timed(p.__name__, p) for p in passes.PIPELINE)
    passes.check_sample_independence = timed("check_sample_independence", passes.check_sample_independence)
    passes.safety.SampleCheck.check = timed("numerical check", passes.safety.SampleCheck.check)
    DPBackend.lower = timed_lower
    trace = emit.trace_snippet

    def counted_trace(fn, args):
        start = clock()
        gm = trace(fn, args)
        row = SNIPPETS[getattr(fn, "__qualname__", type(fn).__name__)]
        row[0], row[1], row[2] = row[0] + 1, row[1] + len(gm.graph.nodes), row[2] + clock() - start
        return gm
    emit.trace_snippet = counted_trace
    make_fx = emit.make_fx

    def counted_make_fx(fn, *args, **kwargs):
        MAKE_FX.append(getattr(fn, "__qualname__", type(fn).__name__))
        return make_fx(fn, *args, **kwargs)
    emit.make_fx = counted_make_fx
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def phase_owner(module_name: str, path: str):
    """(object, attribute) that PHASES names, or None where this torch lacks it."""
    import importlib
    try:
        owner = importlib.import_module(module_name)
        *outer, attr = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        getattr(owner, attr)
    except (ImportError, AttributeError):
        return None
    return owner, attr


def timed_phase(label: str, fn):
    """fn, its time added to PHASE_SPENT under the graph being lowered (its outermost call only: a phase that calls
    itself, or another instance of itself, counts once)."""
    def wrapper(*args, **kwargs):
        graph = LOWERING[-1] if LOWERING else "first runs"
        if getattr(wrapper, "active", False):
            return fn(*args, **kwargs)
        wrapper.active, start = True, clock()
        try:
            return fn(*args, **kwargs)
        finally:
            wrapper.active = False
            PHASE_SPENT[graph][label] += clock() - start
    return wrapper


def first_step(name: str, size: int, batch: int, device: str, backend: str) -> dict[str, float]:
    SPENT.clear()
    SNIPPETS.clear()
    MAKE_FX.clear()
    PHASE_SPENT.clear()
    KERNELS.clear()
    NODES.clear()
    torch.manual_seed(0)
    builder = getattr(zoo, name)
    model = (builder(10) if name != "vit_s16" else builder(num_classes=10, image_size=size)).to(device)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", backend=backend)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    start = clock()
    F.cross_entropy(dp(x), y, reduction="sum").backward()
    if device == "cuda":
        torch.cuda.synchronize()
    spent = clock() - start
    NODES.update(stage_counts(dp.graphs["backward_rewritten"]) if "backward_rewritten" in dp.graphs else {})
    return {**SPENT, "first step": spent}


def stage_counts(gm: torch.fx.GraphModule) -> dict[str, int]:
    """The graph's call_function nodes per stage (STAGES), largest first."""
    counts: dict[str, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node.op == "call_function":
            counts[next(label for prefix, label in STAGES if node.name.startswith(prefix))] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> None:
    global clock
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50_gn,wrn16_4,vit_s16")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="eager", choices=["eager", "inductor"])
    p.add_argument("--clock", default="process", choices=sorted(CLOCK))
    p.add_argument("--snippets", type=int, default=0, metavar="N",
                   help="also list the N emitting functions whose snippet traces took longest (traces, nodes, time)")
    p.add_argument("--phases", action="store_true",
                   help="also split each graph's inductor lowering into its phases (with --backend inductor)")
    p.add_argument("--nodes", action="store_true",
                   help="also count the DP backward's nodes by stage, and the kernels inductor generated per graph")
    args = p.parse_args(argv)
    clock = CLOCK[args.clock]
    card = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"{args.clock} time, s ({card}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
          f"backend {args.backend}, {args.size}², batch {args.batch})")
    for name in args.models.split(","):
        with instrumented():
            t = first_step(name, args.size, args.batch, args.device, args.backend)
        own = sum(v for k, v in t.items() if k != "first step" and not k.startswith("lower"))
        print(f"{name}: DP passes {own:.1f} (" + ", ".join(f"{k} {v:.1f}" for k, v in t.items()
                                                        if k != "first step") + f"); first step {t['first step']:.1f}")
        if args.snippets:
            traces, nodes, spent = (sum(row[i] for row in SNIPPETS.values()) for i in range(3))
            per_node = 1000 * spent / max(nodes, 1)
            print(f"  snippet traces {traces}, {nodes} nodes, {spent:.2f} s ({per_node:.2f} ms a node), "
                  f"{len(MAKE_FX)} through make_fx" + (f" ({', '.join(sorted(set(MAKE_FX)))})" if MAKE_FX else ""))
            for fn, (count, n, sec) in sorted(SNIPPETS.items(), key=lambda kv: -kv[1][2])[:args.snippets]:
                print(f"  {sec:6.2f} s {count:4d} traces {n:6d} nodes  {fn}")
        if args.phases:
            for graph, spent in PHASE_SPENT.items():
                whole = f" (of {t['lower ' + graph]:.1f})" if "lower " + graph in t else ""
                print(f"  {graph}: " + ", ".join(f"{k} {v:.1f}" for k, v in spent.items()) + whole)
        if args.nodes:
            print(f"  DP backward: {sum(NODES.values())} nodes (" + ", ".join(f"{k} {v}" for k, v in NODES.items())
                  + ")" + "".join(f"; {graph}: {n} kernels generated" for graph, n in KERNELS.items()))


if __name__ == "__main__":
    main()
