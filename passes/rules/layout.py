"""Where the batch lives in a tensor whose rows are (batch × positions) flattened in some order.

The rows of a flattened weight-gradient operand are not always batch-first (sequence-first
attention gives (T, B, d) seen as (T·B, d)). We walk back through order-preserving views to a
node whose leading dims show the batch symbol on its own, and reorder from there. A matrix
product keeps the rows of its left operand (row r of A·W is row r of A times W), so the walk goes
through it too: inductor's graph passes fold the views that would otherwise lead back to the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import sympy
import torch
import torch.fx as fx
from torch import Tensor

aten = torch.ops.aten

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


@dataclass(frozen=True)
class RowsLayout:
    """rows = prod(anchor.shape[:lead]); the batch is dim `batch_dim` of those leading dims."""

    anchor: fx.Node
    lead: int
    batch_dim: int


def find_rows_layout(node: fx.Node, rows: sympy.Expr, batch: sympy.Expr) -> RowsLayout | None:
    """Walk back through order-preserving views to leading dims that show the batch on its own."""
    while True:
        shape = shape_of(node)
        for lead in range(1, len(shape) + 1):
            if sympy.simplify(prod(shape[:lead]) - rows) == 0:
                hits = [i for i, s in enumerate(shape[:lead]) if sympy.simplify(s - batch) == 0]
                if len(hits) == 1:
                    return RowsLayout(node, lead, hits[0])
                break
        src = row_source(node)
        if src is None:
            return None
        node = src


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


def to_batch_rows(x: Tensor, anchor: Tensor, lead: int, batch_dim: int) -> Tensor:
    """View x (rows, *rest) as (B, T, *rest) using the anchor's leading dims."""
    lead_shape = anchor.shape[:lead]
    positions = prod(s for i, s in enumerate(lead_shape) if i != batch_dim)
    x = x.reshape(*lead_shape, *x.shape[1:]).movedim(batch_dim, 0)
    return x.reshape(lead_shape[batch_dim], positions, *x.shape[lead:])
