"""Where the batch lives in a tensor whose rows are (batch × positions) flattened in some order.

The rows of a flattened weight-gradient operand are not always batch-first (sequence-first
attention gives (T, B, d) seen as (T·B, d)). We walk back through order-preserving views to a
node whose leading dims show the batch symbol on its own, and reorder from there.
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
}


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
        src = node.args[0] if node.args else None
        if node.target not in ORDER_PRESERVING or not isinstance(src, fx.Node):
            return None
        node = src


def to_batch_rows(x: Tensor, anchor: Tensor, lead: int, batch_dim: int) -> Tensor:
    """View x (rows, *rest) as (B, T, *rest) using the anchor's leading dims."""
    lead_shape = anchor.shape[:lead]
    positions = prod(s for i, s in enumerate(lead_shape) if i != batch_dim)
    x = x.reshape(*lead_shape, *x.shape[1:]).movedim(batch_dim, 0)
    return x.reshape(lead_shape[batch_dim], positions, *x.shape[lead:])
