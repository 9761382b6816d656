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
from .meta import PassContext, involves_batch, is_batched, resolved_batch, shape_of_value

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


def _picked(node: fx.Node, rank: int) -> list[int]:
    """select/slice/narrow: the dim they pick from (a full slice picks nothing)."""
    dim = node.args[1] % rank if len(node.args) > 1 else 0
    if node.target is aten.slice.Tensor and "val" in node.meta:  # a slice that keeps every row picks nothing
        before, after = shape_of_value(node.args[0].meta["val"])[dim], shape_of_value(node.meta["val"])[dim]
        if sympy.simplify(before - after) == 0:
            return []
    return [dim]


def _indexed(node: fx.Node, rank: int) -> list[int]:
    """index.Tensor: the dims given an index tensor."""
    return [d for d, index in enumerate(node.args[1]) if index is not None]


def _reversed(node: fx.Node, rank: int) -> list[int]:
    """prims.rev / flip: the dims reversed."""
    return [d % rank for d in node.args[1]]


# op -> which dims of its first input it mixes across
MIXING_OPS = {
    aten.select.int: _picked, aten.slice.Tensor: _picked, aten.narrow.default: _picked,
    aten.index.Tensor: _indexed, aten._unsafe_index.Tensor: _indexed,
    torch.ops.prims.rev.default: _reversed, aten.flip.default: _reversed,
    **{op: _reduced(1) for op in (
        aten.sum.dim_IntList, aten.mean.dim, aten.var.correction, aten.var_mean.correction,
        aten.std.correction, aten.amax.default, aten.amin.default, aten.max.dim, aten.min.dim,
        aten.prod.dim_int, aten.logsumexp.default, aten.argmax.default, aten.argmin.default,
        aten.cumsum.default, aten.cumprod.default, aten.sort.default, aten.topk.default,
        aten._softmax.default, aten._log_softmax.default, aten.any.dims, aten.all.dims,
        aten.index_select.default, aten.gather.default, aten.roll.default)},
    **{op: _reduced(99) for op in (aten.sum.default, aten.mean.default, aten.max.default, aten.min.default,
                                   aten.prod.default)},
    aten.mm.default: _contracted, aten.bmm.default: _contracted,
    aten._native_batch_norm_legit_functional.default: lambda n, r: [0],
    aten.native_batch_norm.default: lambda n, r: [0],
}


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
    graph, batch = to_networkx(forward), resolved_batch(forward, ctx.batch)
    batched = {n for n in forward.graph.find_nodes(op="placeholder") if is_batched(n.meta.get("val"), batch)}
    reached = set().union(*(nx.descendants(graph, n.name) for n in batched)) if batched else set()
    for node in forward.graph.nodes:
        if node.name in reached and (dims := mixing_dims(node, batch)):
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
    torch.nn.RNNBase: "recurrent layers (nn.RNN, nn.LSTM, nn.GRU), trainable or frozen, do not capture as one "
                      "graph; write the recurrence with nn.Linear cells in a Python loop over time (that is "
                      "supported), or use a convolutional or attention model",
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
            if isinstance(module, cls):
                raise UnsupportedOpError(f"module '{path or '<model>'}' ({type(module).__name__}): {advice}.")


def check_samples_independent(model: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    """Refuse a model whose output for one sample changes when only another sample's input changes.

    A numerical check on the first batch, beside the graph check: it also catches mixing hidden in
    views or data-dependent indexing. Runs the model twice without gradients (same random state,
    buffers restored) and names the first module whose other-sample outputs moved."""
    batch = next((a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), 0)
    if batch < 2:
        return
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    runs = [_recorded_outputs(model, args, kwargs), _recorded_outputs(model, *_changed_first_sample(args, kwargs, batch))]
    with torch.no_grad():  # through .data: the real step's autograd saw these buffers at their version
        for k, v in model.named_buffers():
            v.data.copy_(buffers[k])
    for (path, first), (_, second) in zip(*runs):
        if _others_moved(first, second, batch):
            from dpcompile.errors import SampleMixingError
            module = type(model.get_submodule(path)).__name__ if path else type(model).__name__
            raise SampleMixingError(
                f"module '{path or '<model>'}' ({module}): its output for sample 1 changed when only sample 0's "
                "input changed, so it mixes samples (indexing, slicing, reversing, reshaping or reducing across "
                "the batch) and per-sample gradients do not exist. Make the computation per sample.")


def _recorded_outputs(model, args, kwargs) -> list[tuple[str, object]]:
    """Every module's output, in the order modules finish, under a fixed random state."""
    outputs, hooks = [], []
    for path, module in model.named_modules():
        hooks.append(module.register_forward_hook(lambda m, i, o, path=path: outputs.append((path, o))))
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=_devices(args)):
            torch.manual_seed(0)
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return outputs


def _devices(args) -> list:
    return sorted({a.device.index or 0 for a in args if isinstance(a, torch.Tensor) and a.is_cuda})


def _changed_first_sample(args, kwargs, batch):
    """The inputs with sample 0 replaced (floats: new random values; integers: sample 1's row)."""
    def change(v):
        if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != batch:
            return v
        v = v.clone()
        v[0] = torch.randn_like(v[0]) * (v.std() + 1) if v.is_floating_point() else v[1]
        return v
    return tuple(change(a) for a in args), {k: change(v) for k, v in kwargs.items()}


def _others_moved(first, second, batch) -> bool:
    """Whether any batched tensor in two outputs differs outside sample 0."""
    a = [t for t in torch.utils._pytree.tree_leaves(first) if isinstance(t, torch.Tensor)]
    b = [t for t in torch.utils._pytree.tree_leaves(second) if isinstance(t, torch.Tensor)]
    for x, y in zip(a, b):
        if x.dim() and x.shape == y.shape and x.shape[0] == batch and x.is_floating_point():
            if not torch.allclose(x[1:], y[1:], rtol=1e-5, atol=1e-6 * (x[1:].abs().max().item() + 1e-30)):
                return True
    return False
