"""Where the batch lives in a tensor whose rows are (batch × positions) flattened in some order.

The rows of a flattened weight-gradient operand are not always batch-first (sequence-first
attention gives (T, B, d) seen as (T·B, d)). We walk back through order-preserving views to a
node whose leading dims show the batch symbol on its own, and reorder from there. A matrix
product keeps the rows of its left operand (row r of A·W is row r of A times W), so the walk goes
through it too: inductor's graph passes fold the views that would otherwise lead back to the batch.

With K augmented views per sample (augmentation multiplicity) the user's (B, K, ...) arguments are
flattened to (B·K, ...) inside the capture, so a dim of size K·B holds sample b's views in rows
b·K … b·K+K−1 (the safety pass refuses a forward that reorders them): such a dim is the batch with
k = K rows per sample, and a sample's positions are its K views' positions together.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import sympy
import torch
import torch.fx as fx
from torch import Tensor

from ..meta import VIEWS
from ..symbolic import same

aten = torch.ops.aten

# Dtype conversions (exact where they widen: bounds.exact_cast).
CASTS = {torch.ops.prims.convert_element_type.default, aten._to_copy.default}
# Ops that relabel a tensor's elements without reordering them (row-major order is kept).
ORDER_PRESERVING = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.clone.default,
    aten.alias.default, aten.detach.default, aten.contiguous.default,
    torch.ops.prims.convert_element_type.default, aten._to_copy.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default,
}
PERMUTES = {aten.permute.default, aten.t.default, aten.transpose.int}
# Matrix products and the argument whose rows they keep: mm(A, W), addmm(bias, A, W).
ROW_KEEPING_PRODUCTS = {aten.mm.default: 0, aten.addmm.default: 1}


def keeps_order(node: fx.Node) -> bool:
    """Whether node relabels its input's elements without reordering them: an order-preserving
    view, or a permute that only moves size-one dims."""
    if node.target in ORDER_PRESERVING:
        return True
    if node.target not in PERMUTES:
        return False
    sizes = shape_of(node.args[0])
    rank = len(sizes)
    if node.target is aten.permute.default:
        order = [d % rank for d in node.args[1]]
    else:
        a, b = (0, 1) if node.target is aten.t.default else (node.args[1] % rank, node.args[2] % rank)
        order = list(range(rank))
        order[a], order[b] = order[b], order[a]
    moved = [d for d in order if sizes[d] != 1]
    return moved == sorted(moved)


def size_expr(s) -> sympy.Expr:
    """A size (int or SymInt) as a sympy expression."""
    return s.node.expr if isinstance(s, torch.SymInt) else sympy.Integer(int(s))


def shape_of(node: fx.Node) -> tuple[sympy.Expr, ...]:
    """The node's shape as sympy expressions."""
    return tuple(size_expr(s) for s in node.meta["val"].shape)


def views_of(node: fx.Node) -> int:
    """K, the views per sample of the node's graph (GraphModule.meta['dp_views']; 1 where unset)."""
    gm = node.graph.owning_module
    return int(gm.meta.get(VIEWS, 1)) if gm is not None else 1


def rows_per_sample(size: sympy.Expr, batch: sympy.Expr, views: int) -> int | None:
    """k when a dim of this size is the batch with k consecutive rows per sample: 1 for size B, K for
    size K·B (K > 1 views per sample; B symbolic, or 1: one sample owns every row); else None."""
    if same(size, batch):
        return 1
    if views > 1 and (batch.free_symbols or batch == 1) and same(size, views * batch):
        return views
    return None


@dataclass(frozen=True)
class RowsLayout:
    """rows = prod(anchor.shape[:lead]); the batch is dim `batch_dim` of those leading dims, of size k·B
    (sample b's rows b·k … b·k+k−1)."""

    anchor: fx.Node
    lead: int
    batch_dim: int
    k: int = 1


def find_rows_layout(node: fx.Node, rows: sympy.Expr, batch: sympy.Expr, depth: int = 0) -> RowsLayout | None:
    """Walk back through order-preserving views to leading dims that show the batch on its own (size B,
    or K·B for K views per sample); through a pointwise op, to each operand of the same shape in turn."""
    views = views_of(node)
    while True:
        shape = shape_of(node)
        for lead in range(1, len(shape) + 1):
            if same(prod(shape[:lead]), rows):
                hits = [(i, k) for i, s in enumerate(shape[:lead]) if (k := rows_per_sample(s, batch, views))]
                if len(hits) == 1:
                    return RowsLayout(node, lead, *hits[0])
                break
        src = row_source(node)
        if src is None:
            return next((found for a in same_shape_operands(node) if depth < MAX_POINTWISE_DEPTH
                         and (found := find_rows_layout(a, rows, batch, depth + 1))), None)
        node = src


MAX_POINTWISE_DEPTH = 8


def same_shape_operands(node: fx.Node) -> list[fx.Node]:
    """For a pointwise op, its tensor operands of the output's shape: row r of the output is computed from
    their rows r (the backward of an elementwise forward op; the safety pass has checked that those rows
    belong to one sample), so each one's row layout is the output's."""
    if not isinstance(node.target, torch._ops.OpOverload) or torch.Tag.pointwise not in node.target.tags:
        return []
    shape = node.meta["val"].shape
    return [a for a in node.args if isinstance(a, fx.Node) and isinstance(a.meta.get("val"), Tensor)
            and a.meta["val"].shape == shape]


def row_source(node: fx.Node) -> fx.Node | None:
    """The node whose rows (leading-dim order) node keeps: the input of an order-preserving view,
    or the left operand of a matrix product; None if there is none."""
    if node.target in ROW_KEEPING_PRODUCTS:
        src = node.args[ROW_KEEPING_PRODUCTS[node.target]]
    elif node.args and keeps_order(node):
        src = node.args[0]
    else:
        return None
    return src if isinstance(src, fx.Node) else None


def to_batch_rows(x: Tensor, anchor: Tensor, lead: int, batch_dim: int, k: int = 1) -> Tensor:
    """View x (rows, *rest) as (B, k·T, *rest) using the anchor's leading dims (batch dim of size k·B). Rows that are
    already the samples (one leading dim, k = 1) take an unsqueeze: a reshape of such rows when they are strided (a
    slice of a wider matrix, addmm(b, x[:, 0], w)) asks whether B ≠ 1, a guard that recompiles a batch of one."""
    if lead == 1 and k == 1:
        return x.unsqueeze(1)
    lead_shape = anchor.shape[:lead]
    positions = prod(s for i, s in enumerate(lead_shape) if i != batch_dim)
    x = x.reshape(*lead_shape, *x.shape[1:]).movedim(batch_dim, 0)
    samples = lead_shape[batch_dim] if k == 1 else lead_shape[batch_dim] // k
    return x.reshape(samples, k * positions, *x.shape[lead:])


def to_sample_shape(t: Tensor, shape) -> Tensor:
    """t (B, *s) viewed as (B, *shape), the same values per sample. Where s and shape (both fixed sizes) differ only
    in dims of size 1, by squeeze and unsqueeze: a reshape of a strided t asks whether B ≠ 1, a guard that
    recompiles a batch of one (a class token's per-sample gradient (B, 6) as (B, 1, 1, 6))."""
    rest, shape = tuple(t.shape[1:]), tuple(shape)
    fixed = all(isinstance(n, int) for n in (*rest, *shape))
    if not fixed or [n for n in rest if n != 1] != [n for n in shape if n != 1]:
        return t.reshape(t.shape[0], *shape)
    if 1 in rest:
        t = t.squeeze(tuple(i + 1 for i, n in enumerate(rest) if n == 1))
    for i, n in enumerate(shape):
        if n == 1:
            t = t.unsqueeze(i + 1)
    return t


def views_into_positions(t: Tensor, k: int) -> Tensor:
    """(B·k, *mid, T) -> (B, *mid, k·T): sample b's k view rows become positions of one sample."""
    if k == 1:
        return t
    t = t.reshape(t.shape[0] // k, k, *t.shape[1:]).movedim(1, -2)
    return t.reshape(*t.shape[:-2], k * t.shape[-1])


def per_row(c: Tensor, k: int) -> Tensor:
    """A per-sample vector (B,) repeated for each of a sample's k rows: (B·k,)."""
    return c if k == 1 else c.unsqueeze(1).expand(c.shape[0], k).reshape(c.shape[0] * k)
