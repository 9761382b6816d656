"""Linear layers and any matmul weight gradient: mm(X, Q) = Pᵀ Q with P = Xᵀ, where the rows of P
and Q are (batch × positions) in some order; bmm with a batch of one (einsum, raw `x @ W`) too.

Per sample i: g_i = P_iᵀ Q_i (m × n). Ghost: ‖g_i‖² = Σ_ts (P_i P_iᵀ)_ts (Q_i Q_iᵀ)_ts. With K views per
sample, t and s run over all K·T positions of the sample's views.
"""
from __future__ import annotations

import sympy
import torch
import torch.fx as fx
from torch import Tensor

from ..meta import LayerShape, Site
from ..symbolic import simplified
from . import Cost, generalized_linear_costs, register
from .bounds import (Bound, accumulation_gamma, certified, clipped_product_margin, fused_gram_sum_bound, fused_grams,
                     gram_sum_bound, masked, masked_scaled, matrix_product, product_matrix, release_underflow,
                     row_norms, upper_sum)
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


def _matrix_source(node: fx.Node) -> fx.Node:
    """For a bmm operand of batch one, the 2-D tensor it views (when it is a plain view)."""
    return node.args[0] if node.target in (aten.view.default, aten.unsqueeze.default) else node


class MatmulRule:
    family = "linear"
    products = {"linear": "matmul"}  # its sites that are products, and their kind (precision.tf32_kinds)
    ops = (aten.mm.default, aten.bmm.default)
    methods = ("ghost", "per_sample")

    def match(self, node: fx.Node, batch: sympy.Expr) -> Site | str:
        x, q = node.args
        if node.target is aten.bmm.default and shape_of(node)[0] != 1:
            return "it is a batched matmul over more than one matrix (an expanded parameter is summed after it)"
        x_shape, q_shape = shape_of(x)[-2:], shape_of(q)[-2:]
        rows = x_shape[1]
        candidates = [c for c in (_transposed_source(x), q, _matrix_source(q)) if c is not None]
        layout = next((lay for c in candidates if (lay := find_rows_layout(c, rows, batch))), None)
        if layout is None:
            return f"the batch ({batch}) cannot be found among the {rows} contracted rows of its operands"
        shape = LayerShape(B=batch, T=simplified(rows / batch), d=q_shape[1], p=x_shape[0])
        return Site("linear", (x, q, layout.anchor),
                    {"lead": layout.lead, "batch_dim": layout.batch_dim, "k": layout.k}, shape, op=str(node.target))

    def _rows(self, site: Site, x: Tensor, q: Tensor, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """P and Q as (B, k·T, features); x is Pᵀ (m × rows), possibly with a leading batch of one."""
        lead, bdim, k = site.consts["lead"], site.consts["batch_dim"], site.consts.get("k", 1)
        p, q = (x[0] if x.dim() == 3 else x).t(), q[0] if q.dim() == 3 else q  # (a reshape would guard B != 1)
        return to_batch_rows(p, anchor, lead, bdim, k), to_batch_rows(q, anchor, lead, bdim, k)

    def per_sample(self, site: Site, x: Tensor, q: Tensor, anchor: Tensor) -> Tensor:
        """g_i = P_iᵀ Q_i, shape (B, m, n)."""
        p, q = self._rows(site, x, q, anchor)
        return matrix_product(p.transpose(1, 2), q, site.tf32)

    def ghost_factors(self, site: Site, x: Tensor, q: Tensor, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """g_i = Σ_t p_t ⊗ q_t: the sample's rows of P and Q, (B, N, m) and (B, N, n) (tied uses' cross terms)."""
        return self._rows(site, x, q, anchor)

    def ghost_norm_sq(self, site: Site, x: Tensor, q: Tensor, anchor: Tensor) -> Tensor:
        """‖P_iᵀ Q_i‖² = Σ_ts (P_i P_iᵀ ∘ Q_i Q_iᵀ)_ts; for T = 1 it is ‖P_i‖²‖Q_i‖²."""
        p, q = self._rows(site, x, q, anchor)
        if site.shape.T == 1:
            return p.square().sum((1, 2)) * q.square().sum((1, 2))
        return (torch.bmm(p, p.transpose(1, 2)) * torch.bmm(q, q.transpose(1, 2))).sum((1, 2))

    def ghost_norm_bound(self, site: Site, x: Tensor, q: Tensor, anchor: Tensor) -> Bound:
        """[s, e, a]: s ≥ ‖P_iᵀQ_i‖² (T = 1: (‖p‖‖q‖)²; else the Gram form plus its error bound, where
        bounds.fused_grams says from one kernel that stores no Gram), e the
        clipped sum's rounding per unit c, (u + γ_T)·M_i with M_i = Σ_t ‖p_t‖‖q_t‖ (TF32 products: their
        truncation added, and the Grams' in s: tf32_product_error), a what underflow in c·P_i adds
        (release_underflow: P is the scaled operand)."""
        p, q = self._rows(site, x, q, anchor)
        r, rho = row_norms(p), row_norms(q)
        m = upper_sum(r * rho, [1])
        tf32 = site.tf32  # the clipped sum's product and the Grams on TF32 tensor cores
        if site.shape.T == 1:
            s = m.square()
        elif fused_grams(p, q, tf32):  # one kernel, no Gram stored
            s = fused_gram_sum_bound(p, q, r, rho)
        else:
            (a, ga, ea), (b, gb, eb) = product_matrix(p, p, tf32), product_matrix(q, q, tf32)
            s = gram_sum_bound(a.unsqueeze(1), b.unsqueeze(1), r.unsqueeze(1), rho.unsqueeze(1), ga, ea, gb, eb)
        rows, features = p.shape[1], p.shape[2]
        absolute = release_underflow(upper_sum(rho, [1]), features, p.dtype, rows, features * q.shape[2], p.dtype,
                                     tf32)
        margin = clipped_product_margin(m, p.dtype, rows, (upper_sum(r, [1]), q.shape[2]) if tf32 else None)
        return certified(s, margin, absolute, p.dtype)

    def per_sample_margin(self, site: Site, x: Tensor, q: Tensor, anchor: Tensor) -> Tensor:
        """‖ĝ_i − g_i‖ ≤ γ_T·M_i for the products' accumulation over T positions."""
        p, q = self._rows(site, x, q, anchor)
        m = upper_sum(row_norms(p) * row_norms(q), [1])
        return accumulation_gamma(p.shape[1], p.dtype) * m

    def clipped_sum(self, site: Site, clip: Tensor, x: Tensor, q: Tensor, anchor: Tensor) -> Tensor:
        """Σ_i c_i P_iᵀ Q_i as one matmul over all rows (dropped samples masked out; TF32 where the plan says)."""
        p, q = self._rows(site, x, q, anchor)
        p, q = masked_scaled(p, clip), masked(q, clip)
        if site.tf32:
            return matrix_product(p.flatten(0, 1).t().unsqueeze(0), q.flatten(0, 1).unsqueeze(0), True)[0]
        return torch.mm(p.flatten(0, 1).t(), q.flatten(0, 1))

    def cost(self, site: Site) -> dict[str, Cost]:
        return generalized_linear_costs(site.shape)


register(MatmulRule())
