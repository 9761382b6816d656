"""Parameter gradients that are sums over the batch of a per-sample tensor: biases of linear layers,
class tokens, position embeddings, layer scales, norm affines after decomposition.

Per sample i: g_i = Σ over the summed dims other than the batch of X_i. Instantiated (B × |param|).
A batch dim of size K·B (K views per sample, rows b·K … b·K+K−1) sums each sample's K rows too.
"""
from __future__ import annotations

from math import prod

import sympy
import torch
import torch.fx as fx
from torch import Tensor

from ..meta import LayerShape, Site
from ..symbolic import same
from . import WORD, Cost, register
from .bounds import accumulation_gamma, masked_scaled, row_norms, upper_sum
from .layout import find_rows_layout, rows_per_sample, shape_of, to_batch_rows, to_sample_shape, views_of

aten = torch.ops.aten


def _summed_dims(node: fx.Node) -> list[int]:
    """The dims a sum node reduces, non-negative, sorted."""
    rank = len(node.args[0].meta["val"].shape)
    dims = node.args[1] if node.target is aten.sum.dim_IntList and len(node.args) > 1 else None
    dims = range(rank) if dims is None or len(dims) == 0 else dims
    return sorted(d % rank for d in dims)


class SumRule:
    family = "reduction"
    ops = (aten.sum.dim_IntList, aten.sum.default)
    methods = ("per_sample",)

    def match(self, node: fx.Node, batch: sympy.Expr) -> Site | str:
        x = node.args[0]
        shape, dims = shape_of(x), _summed_dims(node)
        kept = [s for i, s in enumerate(shape) if i not in dims]
        numel = sympy.Integer(1)
        for s in kept:
            numel *= s
        views = views_of(node)
        explicit = [(d, k) for d in dims if (k := rows_per_sample(shape[d], batch, views))]
        if len(explicit) != 1 and (inner := _through_inner_sums(x, dims)) is not None:
            x, dims = inner  # a sum of a sum (a parameter's .repeat(B, 1, 1)): one sum over the union
            shape = shape_of(x)
            explicit = [(d, k) for d in dims if (k := rows_per_sample(shape[d], batch, views))]
        if len(explicit) == 1:
            consts = {"batch_dim": explicit[0][0], "dims": dims, "lead": None, "k": explicit[0][1]}
            return Site("reduction", (x,), consts, LayerShape(batch, _positions(shape, dims) / batch, 1, numel),
                        op=str(node.target))
        if dims != list(range(len(dims))):
            return f"it sums dims {dims}, none of which is the batch ({batch})"
        rows = sympy.Integer(1)
        for d in dims:
            rows *= shape[d]
        layout = next((lay for c in _row_sources(x, len(dims), rows) if (lay := find_rows_layout(c, rows, batch))), None)
        if layout is None:
            return f"the batch ({batch}) cannot be found among the {rows} summed rows"
        consts = {"batch_dim": layout.batch_dim, "dims": dims, "lead": layout.lead, "k": layout.k}
        return Site("reduction", (x, layout.anchor), consts, LayerShape(batch, rows / batch, 1, numel),
                    op=str(node.target))

    def per_sample(self, site: Site, x: Tensor, anchor: Tensor | None = None) -> Tensor:
        """g_i = Σ_{summed dims except batch} X_i (and over the sample's k rows), shape (B, *kept dims)."""
        c, k = site.consts, site.consts.get("k", 1)
        if c["lead"] is None:
            others = [d for d in c["dims"] if d != c["batch_dim"]]
            g = x.sum(others).movedim(c["batch_dim"] - sum(d < c["batch_dim"] for d in others), 0) \
                if others else x.movedim(c["batch_dim"], 0)
            return g if k == 1 else g.reshape(g.shape[0] // k, k, *g.shape[1:]).sum(1)
        ndims = len(c["dims"])
        flat = x.reshape(-1, *x.shape[ndims:])
        return to_batch_rows(flat, anchor, c["lead"], c["batch_dim"], k).sum(1)

    def _position_rows(self, site: Site, x: Tensor, anchor: Tensor | None = None) -> Tensor:
        """X_i as (B, k·T, K): the summed positions (of the sample's k rows), and the kept elements of each."""
        c, k = site.consts, site.consts.get("k", 1)
        if c["lead"] is None:
            others = [d for d in c["dims"] if d != c["batch_dim"]]
            kept = [d for d in range(x.dim()) if d not in c["dims"]]
            xp = x.permute(c["batch_dim"], *others, *kept)
            T, K = prod(x.shape[d] for d in others), prod(x.shape[d] for d in kept)
            if k == 1:
                return to_sample_shape(xp, (T, K))  # a reshape of a strided x asks whether B ≠ 1
            return xp.reshape(xp.shape[0] // k, k * T, K)
        flat = x.reshape(-1, *x.shape[len(c["dims"]):])
        rows = to_batch_rows(flat, anchor, c["lead"], c["batch_dim"], k)
        return rows.flatten(2) if rows.dim() > 2 else rows.unsqueeze(-1)

    def per_sample_margin(self, site: Site, x: Tensor, anchor: Tensor | None = None) -> Tensor:
        """‖ĝ_i − g_i‖ ≤ γ_T·Σ_t ‖x_t‖ (a sum over T positions)."""
        rows = self._position_rows(site, x, anchor)
        return accumulation_gamma(rows.shape[1], x.dtype) * upper_sum(row_norms(rows), [1])

    def clipped_sum(self, site: Site, clip: Tensor, *tensors: Tensor) -> Tensor:
        """Σ_i c_i g_i from the per-sample gradients (dropped samples masked out)."""
        return masked_scaled(self.per_sample(site, *tensors).flatten(1), clip).sum(0)

    def cost(self, site: Site) -> dict[str, Cost]:
        s = site.shape
        return {"per_sample": Cost(flops=s.B * s.T * s.p, bytes=s.B * s.p * WORD)}


ELEMENTWISE = {aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.neg.default}


def _through_inner_sums(x: fx.Node, dims: list[int]) -> tuple[fx.Node, list[int]] | None:
    """For x a sum (of a sum …) over dims of its input: (that input, the dims of it summed in all),
    the outer dims mapped through the dims the inner sums dropped; None if x is no sum."""
    if x.target not in SumRule.ops or x.target is aten.sum.dim_IntList and len(x.args) > 3:
        return None
    while x.target in SumRule.ops and not (x.target is aten.sum.dim_IntList and len(x.args) > 3):
        inner = _summed_dims(x)
        keepdim = x.target is aten.sum.dim_IntList and len(x.args) > 2 and bool(x.args[2])
        kept = list(range(len(shape_of(x.args[0])))) if keepdim else \
            [d for d in range(len(shape_of(x.args[0]))) if d not in inner]
        dims = sorted(set(inner) | {kept[d] for d in dims})
        x = x.args[0]
    return x, dims


def _row_sources(x: fx.Node, ndims: int, rows: sympy.Expr) -> list[fx.Node]:
    """x, and for an elementwise x (a decomposed small matmul is mul then sum) its operands whose
    leading dims hold the same rows in the same order."""
    sources = [x]
    if x.target in ELEMENTWISE:
        for a in x.args:
            if isinstance(a, fx.Node) and len(shape_of(a)) >= ndims and \
                    same(prod(shape_of(a)[:ndims]), rows):
                sources.append(a)
    return sources


def _positions(shape, dims) -> sympy.Expr:
    """Product of the summed sizes (batch included)."""
    out = sympy.Integer(1)
    for d in dims:
        out *= shape[d]
    return out


register(SumRule())
