"""How much memory a sample adds to the backward's peak, non-private against DP, from the graphs alone (no GPU).

    python benchmarks/live_memory.py --configs resnet18_32,resnet18_224 [--policy auto] [--top 8]

Captures each suite config's first step on the CPU (backend="eager", batch 2, which records the non-private backward
graph AOTAutograd made and dpcompile's rewritten one), then walks each graph in its order and keeps every value
alive from the node that makes it to its last user: the backward's inputs (saved activations) from the start, each
freed after its last use, as inductor's generated code frees them. The live bytes' maximum, at batches N and 2N
(the batch symbol set to each), gives the bytes per sample at the peak (the slope), which is what bounds the
largest batch that fits: largest(DP) / largest(non-private) ≈ slope(non-private) / slope(DP) once the batch is
large. No fusion is modelled (inductor keeps fused pointwise intermediates in registers), so a graph whose peak sits
on such intermediates is overestimated; a view keeps its base's storage alive and allocates nothing.

Against the GPU (H200, torch 2.11, 2026-12-03, `bench.py --largest-batch`, peak ÷ batch of the largest batch that
fitted): ResNet-18 (GN) 32², predicted 4.77 (non-private) and 8.44 MB per sample (DP, auto), measured 4.87 (134.0 GiB
at 29,568 samples) and 9.35 (108.8 GiB at 12,496): ratio 0.57 predicted, 0.52 measured. At 224² (ResNet-18 (GN),
ImageNet stem) the absolute figures are low by a third (17.8 and 33.4 predicted, 27.8 and 47.9 measured: the forward's
and cuDNN's share is not modelled) and the ratio holds (0.53 against 0.58). With --fuse (pointwise values that only
feed pointwise ops and reductions are never written, as inductor fuses them) the DP figures drop to 7.48 and 27.9 and
the ratios rise to 0.63, further from the GPU's: the graphs are captured on the CPU, where a ghost convolution's
clipped sum is oneDNN's weight gradient, while on CUDA it is a GEMM over the unfolded input, which neither walk sees.
An estimate to aim memory work with; the figures to quote are the GPU's.
"""
from __future__ import annotations

import argparse
import json
import operator
import sys
from pathlib import Path

import sympy
import torch
import torch.fx as fx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_configs import CONFIGS, expand_configs, loss_fn, make_batch  # noqa: E402

import dpcompile  # noqa: E402
from dpcompile.passes.meta import shape_of_value  # noqa: E402

MiB = 2**20


def value_bytes(value, batch: int) -> int:
    """A tensor's bytes with every size symbol set to batch (the graphs' only symbol is the batch); 0 for others."""
    if not isinstance(value, torch.Tensor):
        return 0
    numel = sympy.Mul(*shape_of_value(value))
    return int(numel.xreplace({s: batch for s in numel.free_symbols})) * value.element_size()


def is_view(node: fx.Node) -> bool:
    """An op whose output aliases its input (its schema says so: view, permute, unfold, slice, alias, ...)."""
    schema = getattr(node.target, "_schema", None)
    return bool(schema and schema.returns and schema.returns[0].alias_info is not None)


aten = torch.ops.aten
REDUCTIONS = {aten.sum.default, aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default,
              aten.max.default, aten.min.default, aten.prod.default, aten.prod.dim_int}


CASTS = {aten._to_copy.default, torch.ops.prims.convert_element_type.default}  # dtype casts: pointwise too


def is_pointwise(node: fx.Node) -> bool:
    return node.op == "call_function" and (torch.Tag.pointwise in getattr(node.target, "tags", ()) or
                                           node.target in CASTS)


def fused(node: fx.Node) -> bool:
    """A pointwise value whose every user is pointwise or a reduction: inductor computes it inside its users' kernel
    and never writes it (fuse=True)."""
    users = node.users
    return is_pointwise(node) and bool(users) and all(is_pointwise(u) or u.target in REDUCTIONS for u in users)


def storages(gm: fx.GraphModule, batch: int, fuse: bool = False) -> tuple[list[fx.Node], dict, dict]:
    """(the graph's nodes in order, the bytes each allocates, the index of the last node that reads its storage):
    a view allocates nothing and keeps its base's storage alive until the view's own last use; a multi-output op's
    outputs are counted at the getitems that take them; with fuse, a pointwise value read only by pointwise ops and
    reductions allocates nothing and keeps its inputs alive until its own last use."""
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    index = {n: i for i, n in enumerate(nodes)}
    bases: dict[fx.Node, set] = {}  # the storages a value keeps alive
    size = {}
    for node in nodes:
        value = node.meta.get("val")
        inputs = [a for a in node.all_input_nodes if a in bases]
        if node.target is operator.getitem:
            size[node], bases[node] = value_bytes(value, batch), {node}
        elif is_view(node) and inputs:
            size[node], bases[node] = 0, bases[inputs[0]]
        elif fuse and fused(node):
            size[node], bases[node] = 0, set().union(*(bases[a] for a in inputs))
        else:
            size[node], bases[node] = (0 if isinstance(value, (tuple, list)) else value_bytes(value, batch)), {node}
    free_at: dict[fx.Node, int] = {n: index[n] for n in nodes}  # a storage's last use by any value that holds it
    for node in nodes:
        for arg in node.all_input_nodes:
            for storage in bases.get(arg, ()):
                free_at[storage] = max(free_at[storage], index[node])
    return nodes, size, free_at


def graph_peak(gm: fx.GraphModule, batch: int, fuse: bool = False) -> tuple[int, str, list[tuple[str, int]]]:
    """(peak live bytes, the node where it is reached, the values live there, largest first) in graph order. A
    view allocates nothing and keeps its base's storage alive until the view's own last use; a multi-output op's
    outputs are counted at the getitems that take them (an output nothing takes is freed at once). With fuse, a
    pointwise value read only by pointwise ops and reductions allocates nothing and keeps its inputs alive until its
    own last use (inductor's fusion, roughly)."""
    nodes, size, free_at = storages(gm, batch, fuse)
    frees: dict[int, list[fx.Node]] = {}
    for storage, i in free_at.items():
        frees.setdefault(i, []).append(storage)
    live: dict[fx.Node, int] = {}
    total = peak = 0
    where, at_peak = "", []
    for i, node in enumerate(nodes):
        if size[node]:
            live[node] = size[node]
            total += size[node]
            if total > peak:
                peak, where = total, node.name
                at_peak = sorted(((n.name, b) for n, b in live.items()), key=lambda kv: -kv[1])
        for storage in frees.get(i, ()):
            total -= live.pop(storage, 0)
    return peak, where, at_peak


def slope(gm: fx.GraphModule, batch: int, top: int, fuse: bool = False) -> dict:
    """Bytes per sample at the peak, from the peaks at batch and 2·batch, and what is live at the larger one."""
    low, _, _ = graph_peak(gm, batch, fuse)
    high, where, at_peak = graph_peak(gm, 2 * batch, fuse)
    return {"mb_per_sample": round((high - low) / batch / 1e6, 3), "peak_node": where,
            "live_at_peak_mib": {name: round(b / MiB, 1) for name, b in at_peak[:top]}}


def measure(name: str, policy: str, batch: int, top: int, fuse: bool = False) -> dict:
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = cfg.build()
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, policy=policy, backend="eager")
    x, y = make_batch(cfg, torch.device("cpu"), 2)
    loss_fn(dp(x), y).backward()
    plain = slope(dp.graphs["backward"], batch, top, fuse)
    private = slope(dp.graphs["backward_rewritten"], batch, top, fuse)
    return {"config": name, "policy": policy, "fuse": fuse, "non_private": plain, "dp": private,
            "largest_batch_ratio_estimate": round(plain["mb_per_sample"] / private["mb_per_sample"], 3)}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="resnet18_32", help="bench_configs names or groups, comma-separated")
    p.add_argument("--policy", default="auto")
    p.add_argument("--batch", type=int, default=1000, help="the batch N of the slope (peaks at N and 2N)")
    p.add_argument("--top", type=int, default=8, help="values live at the DP peak to list")
    p.add_argument("--fuse", action="store_true", help="pointwise values read only by pointwise ops and reductions "
                   "allocate nothing (inductor's fusion, roughly)")
    args = p.parse_args(argv)
    results = []
    for name in expand_configs(args.configs):
        results.append(measure(name, args.policy, args.batch, args.top, args.fuse))
        print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
