"""Safety pass: refuse a forward graph in which a computation mixes samples along the batch.

Per-sample gradients exist only if sample i's output depends on sample i's input alone. We find
every node that depends on a batched input (networkx descendants) and refuse any of them that
reduces, contracts, scans, sorts or indexes over a dimension whose size involves the batch symbol
(BatchNorm in training mode decomposes to exactly such a mean and variance).
"""
from __future__ import annotations

import re

import networkx as nx
import sympy
import torch
import torch.fx as fx

from dpcompile.errors import SampleMixingError

from .export import to_networkx
from .meta import PassContext, shape_of_value

aten = torch.ops.aten


def _reduced(dims_at: int):
    """Dims argument at position dims_at (None or [] meaning every dim)."""
    def dims(node: fx.Node, rank: int) -> list[int]:
        d = node.args[dims_at] if len(node.args) > dims_at else node.kwargs.get("dim")
        d = [d] if isinstance(d, int) else d
        return list(range(rank)) if not d else [x % rank for x in d]
    return dims


def _contracted(node: fx.Node, rank: int) -> list[int]:
    """mm/bmm: the first operand's last dim is summed over."""
    return [rank - 1]


# op -> which dims of its first input it mixes across
MIXING_OPS = {
    **{op: _reduced(1) for op in (
        aten.sum.dim_IntList, aten.mean.dim, aten.var.correction, aten.var_mean.correction,
        aten.std.correction, aten.amax.default, aten.amin.default, aten.max.dim, aten.min.dim,
        aten.prod.dim_int, aten.logsumexp.default, aten.argmax.default, aten.argmin.default,
        aten.cumsum.default, aten.cumprod.default, aten.sort.default, aten.topk.default,
        aten._softmax.default, aten._log_softmax.default, aten.any.dims, aten.all.dims,
        aten.index_select.default, aten.gather.default, aten.roll.default, aten.flip.default)},
    **{op: _reduced(99) for op in (aten.sum.default, aten.mean.default, aten.max.default, aten.min.default,
                                   aten.prod.default)},
    aten.mm.default: _contracted, aten.bmm.default: _contracted,
    aten._native_batch_norm_legit_functional.default: lambda n, r: [0],
    aten.native_batch_norm.default: lambda n, r: [0],
}


def involves_batch(size: sympy.Expr, batch: sympy.Expr) -> bool:
    """Whether a dimension's size depends on the batch size."""
    if batch.free_symbols:
        return bool(size.free_symbols & batch.free_symbols)
    return False


def mixing_dims(node: fx.Node, batch: sympy.Expr) -> list[int]:
    """The dims of node's first input that it mixes and whose size involves the batch."""
    rule = MIXING_OPS.get(node.target)
    src = node.args[0] if node.args else None
    if rule is None or not isinstance(src, fx.Node) or "val" not in src.meta:
        return []
    if node.target in (aten._native_batch_norm_legit_functional.default, aten.native_batch_norm.default) \
            and not node.args[5]:
        return []  # eval mode: running statistics, no mixing
    shape = shape_of_value(src.meta["val"])
    return [d for d in rule(node, len(shape)) if d < len(shape) and involves_batch(shape[d], batch)]


def where(node: fx.Node) -> str:
    """The module path and class a forward node came from."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<model>"
    path, cls = list(stack.values())[-1]
    path = re.sub(r"^L\['[^']+'\]\.?", "", str(path)) or "<model>"
    return f"'{path}' ({getattr(cls, '__name__', cls)})"


def check_sample_independence(forward: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Raise SampleMixingError naming the module and op of the first sample-mixing node."""
    graph = to_networkx(forward)
    batched = {n for n in forward.graph.find_nodes(op="placeholder")
               if "val" in n.meta and isinstance(n.meta["val"], torch.Tensor)
               and any(involves_batch(s, ctx.batch) for s in shape_of_value(n.meta["val"]))}
    reached = set().union(*(nx.descendants(graph, n.name) for n in batched)) if batched else set()
    for node in forward.graph.nodes:
        if node.name in reached and (dims := mixing_dims(node, ctx.batch)):
            hint = (" BatchNorm in training mode normalises with statistics of the whole batch: call "
                    "dpcompile.fix(model) to replace it with GroupNorm, or put it in eval mode."
                    if "norm" in str(node.target) or "BatchNorm" in where(node) else
                    " Make the computation per sample (no reductions, sorting or indexing across the batch).")
            raise SampleMixingError(
                f"module {where(node)}: {node.target} mixes samples across dim(s) {dims} of the batch, so "
                f"per-sample gradients do not exist and no clipping bound would hold.{hint}")
    return forward


# Module classes refused before capture, with what to do instead.
REFUSED_MODULES = {
    torch.nn.RNNBase: "recurrent layers (nn.RNN, nn.LSTM, nn.GRU) do not capture as one graph; write the "
                      "recurrence with nn.Linear cells in a Python loop over time (that is supported), or "
                      "use a convolutional or attention model",
}


def refuse_unsupported_modules(model: torch.nn.Module) -> None:
    """Raise UnsupportedOpError naming the first submodule of a refused class."""
    from dpcompile.errors import UnsupportedOpError
    for path, module in model.named_modules():
        if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and module.weight.requires_grad \
                and (module.scale_grad_by_freq or module.sparse):
            raise UnsupportedOpError(
                f"module '{path or '<model>'}' ({type(module).__name__}): scale_grad_by_freq counts indices over "
                "the whole batch (it mixes samples) and sparse gradients are not clipped per sample; set "
                "scale_grad_by_freq=False and sparse=False.")
        for cls, advice in REFUSED_MODULES.items():
            if isinstance(module, cls) and any(p.requires_grad for p in module.parameters()):
                raise UnsupportedOpError(f"module '{path or '<model>'}' ({type(module).__name__}): {advice}. "
                                         "Or freeze it (requires_grad=False).")
