"""Composite pass: ops with no per-sample form in the backward graph, replaced by the ATen ops of their formula.

Runs first. Inductor's decompositions (the capture's) leave these in the graph; giving the capture a table of its
own instead would take the DP graphs out of inductor's FX graph cache (a custom table is part of its key, and most
of its functions do not pickle), so that every run compiled them again.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .emit import emit
from .meta import PassContext

aten = torch.ops.aten


def weight_norm_backward(grad_w, v, g, norms, dim: int):
    """_weight_norm_interface's backward as ATen's composite formula (w = g·v/‖v‖ over all dims but dim): its own
    op (the fused kernel's backward) has no batched form; as ordinary ops it is linear in the weight's gradient,
    which the norm follows."""
    dims = [d for d in range(v.dim()) if d != dim % v.dim()]
    per_dim = (grad_w * v).sum(dims, keepdim=True)
    return (g / norms) * (grad_w - v * (per_dim / (norms * norms))), per_dim / norms


def expand_composites(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Every _weight_norm_interface_backward replaced, in place, by weight_norm_backward's ops."""
    graph = gm.graph
    found = graph.find_nodes(op="call_function", target=aten._weight_norm_interface_backward.default)
    for node in found:
        *tensors, dim = node.args
        with graph.inserting_before(node):
            parts = emit(graph, lambda *t, dim=dim: weight_norm_backward(*t, dim), tensors, f"{node.name}_composite")
        for user in list(node.users):  # getitem(node, i)
            user.replace_all_uses_with(parts[user.args[1]])
            graph.erase_node(user)
        graph.erase_node(node)
    if found:
        graph.lint()
        gm.recompile()
    return gm
