"""Linear layers and any matmul weight gradient: mm(t(P), Q) with rows of P and Q = (batch × positions).

Per sample i: g_i = P_iᵀ Q_i (m × n). Ghost: ‖g_i‖² = Σ_ts (P_i P_iᵀ)_ts (Q_i Q_iᵀ)_ts.
"""
from __future__ import annotations

import sympy
import torch
import torch.fx as fx
from torch import Tensor

from ..meta import LayerShape, Site
from . import WORD, Cost, register
from .layout import find_rows_layout, shape_of, to_batch_rows

aten = torch.ops.aten
TRANSPOSES = {aten.t.default, aten.permute.default, aten.transpose.int}


def _transposed_source(node: fx.Node) -> fx.Node | None:
    """The 2-D tensor that node transposes, if node is a plain 2-D transpose."""
    if node.target not in TRANSPOSES or len(node.meta["val"].shape) != 2:
        return None
    if node.target is aten.permute.default and list(node.args[1]) != [1, 0]:
        return None
    return node.args[0]


class MatmulRule:
    family = "linear"
    ops = (aten.mm.default,)
    methods = ("ghost", "per_sample")

    def match(self, node: fx.Node, batch: sympy.Expr) -> Site | str:
        first, q = node.args
        p = _transposed_source(first)
        if p is None:
            return "its first operand is not a transposed (rows × features) matrix"
        rows = shape_of(p)[0]
        layout = find_rows_layout(p, rows, batch) or find_rows_layout(q, rows, batch)
        if layout is None:
            return f"the batch ({batch}) cannot be found among the {rows} rows of its operands"
        m, n = shape_of(p)[1], shape_of(q)[1]
        shape = LayerShape(B=batch, T=sympy.simplify(rows / batch), d=n, p=m)
        return Site("linear", (p, q, layout.anchor), {"lead": layout.lead, "batch_dim": layout.batch_dim},
                    shape, op="aten.mm")

    def _rows(self, site: Site, p: Tensor, q: Tensor, anchor: Tensor) -> tuple[Tensor, Tensor]:
        lead, bdim = site.consts["lead"], site.consts["batch_dim"]
        return to_batch_rows(p, anchor, lead, bdim), to_batch_rows(q, anchor, lead, bdim)

    def per_sample(self, site: Site, p: Tensor, q: Tensor, anchor: Tensor) -> Tensor:
        """g_i = P_iᵀ Q_i, shape (B, m, n)."""
        p, q = self._rows(site, p, q, anchor)
        return torch.bmm(p.transpose(1, 2), q)

    def ghost_norm_sq(self, site: Site, p: Tensor, q: Tensor, anchor: Tensor) -> Tensor:
        """‖P_iᵀ Q_i‖² = Σ_ts (P_i P_iᵀ ∘ Q_i Q_iᵀ)_ts; for T = 1 it is ‖P_i‖²‖Q_i‖²."""
        p, q = self._rows(site, p, q, anchor)
        if site.shape.T == 1:
            return p.square().sum((1, 2)) * q.square().sum((1, 2))
        return (torch.bmm(p, p.transpose(1, 2)) * torch.bmm(q, q.transpose(1, 2))).sum((1, 2))

    def clipped_sum(self, site: Site, clip: Tensor, p: Tensor, q: Tensor, anchor: Tensor) -> Tensor:
        """Σ_i c_i P_iᵀ Q_i as one matmul over all rows."""
        p, q = self._rows(site, p, q, anchor)
        p = p * clip.to(p.dtype).view(-1, 1, 1)
        return torch.mm(p.flatten(0, 1).t(), q.flatten(0, 1))

    def cost(self, site: Site) -> dict[str, Cost]:
        s = site.shape
        return {
            "ghost": Cost(flops=2 * s.B * s.T**2 * (s.p + s.d) + 2 * s.B * s.T**2, bytes=2 * s.B * s.T**2 * WORD),
            "per_sample": Cost(flops=2 * s.B * s.T * s.p * s.d, bytes=s.B * s.p * s.d * WORD),
        }


register(MatmulRule())
