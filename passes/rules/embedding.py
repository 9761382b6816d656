"""Embedding tables: the gradient scatters output gradients into the rows named by the indices.

Per sample i: g_i = Σ_t e_{idx_t} ⊗ v_t (V × D), padding positions masked out.
Ghost: ‖g_i‖² = Σ_ts [idx_t = idx_s] ⟨v_t, v_s⟩. Per-sample: a scatter into (B, V, D).
The batch may be any one dim of the indices; indices with none (a position or token-type row shared by
the batch and broadcast) take v from before the backward's sum over the batch. A batch dim of size K·B
(K views per sample, rows b·K … b·K+K−1) gives each sample the positions of its K rows.
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
from .bounds import (Bound, SUBNORMAL, accumulation_dtype, accumulation_gamma, certified, clipped_product_margin,
                     full_precision, gamma, gram_sum_bound, masked_scaled, release_underflow, row_norms, unit_roundoff,
                     upper_sum)
from .layout import PERMUTES, keeps_order, rows_per_sample, shape_of, views_of
from .reduction import SumRule, _summed_dims

aten = torch.ops.aten


class EmbeddingRule:
    family = "embedding"
    ops = (aten._unsafe_masked_index_put_accumulate.default, aten.embedding_dense_backward.default,
           aten._unsafe_index_put.default, aten.index_put.default, aten._embedding_bag_backward.default)
    methods = ("ghost", "per_sample")

    def match(self, node: fx.Node, batch: sympy.Expr) -> Site | str:
        if node.target is aten._embedding_bag_backward.default:
            return self._match_bag(node, batch)
        if node.target is aten.embedding_dense_backward.default:
            values, indices, num_weights, padding_idx, by_freq = node.args[:5]
            if by_freq:
                return "scale_grad_by_freq counts indices over the whole batch, which mixes samples"
            mask, table = None, (num_weights, shape_of(values)[-1])
        elif node.target is aten._unsafe_masked_index_put_accumulate.default:
            base, mask, (indices,), values = node.args[:4]
            padding_idx, table = None, shape_of(base)
        else:
            base, index_list, values = node.args[:3]
            if not (len(node.args) > 3 and node.args[3]) or len(index_list) != 1:
                return "it is an index_put that does not accumulate rows of a table"
            (indices,), mask, padding_idx, table = index_list, None, None, shape_of(base)
        layout = _index_layout(indices, values, batch)
        if isinstance(layout, str):
            return layout
        idx_batch_dim, per_sample_values, value_batch_dim, k, value_chain, padding = layout
        padding_idx = padding if padding is not None else padding_idx
        positions = sympy.Integer(1)
        for s in shape_of(indices):
            positions *= s
        if idx_batch_dim is not None:
            positions = positions / batch
        shape = LayerShape(B=batch, T=positions, d=table[1], p=table[0])
        inputs = (indices, per_sample_values) + (() if mask is None else (mask,))
        return Site("embedding", inputs, {"padding_idx": padding_idx, "table": tuple(int(t) for t in table),
                                          "idx_batch_dim": idx_batch_dim, "value_batch_dim": value_batch_dim,
                                          "k": k, "value_chain": value_chain}, shape, op=str(node.target))

    def _match_bag(self, node: fx.Node, batch: sympy.Expr) -> Site | str:
        """EmbeddingBag with a 2-D input: bag i is sample i (or one of its k views), its N indices scatter
        grad_i (sum) or grad_i / bag_size_i (mean), times per-sample weights if any."""
        grad, indices, _offsets, _offset2bag, bag_size, _max, num_weights, by_freq, mode = node.args[:9]
        weights = node.args[10] if len(node.args) > 10 else None
        padding_idx = node.args[11] if len(node.args) > 11 else -1
        if by_freq or mode not in (0, 1):
            return "only sum and mean bags without scale_grad_by_freq have a per-sample rule"
        k = rows_per_sample(shape_of(grad)[0], batch, views_of(node))
        if k is None:
            return "its bags are not the samples (use a 2-D input: one bag per sample)"
        positions = shape_of(indices)[0] / batch
        shape = LayerShape(B=batch, T=positions, d=shape_of(grad)[1], p=sympy.sympify(num_weights))
        inputs = (indices, grad, bag_size) + ((weights,) if weights is not None else ())
        return Site("embedding_bag", inputs, {"mode": mode, "padding_idx": padding_idx, "k": k,
                    "table": (int(num_weights), int(shape_of(grad)[1]))}, shape, op=str(node.target))

    def _rows(self, site: Site, *tensors: Tensor):
        """Indices (B, N) and masked values (B, N, D), a sample's k rows (views) together: N = k·positions."""
        rows = self._bag_rows if site.rule == "embedding_bag" else self._table_rows
        idx, values = rows(site, *tensors)
        k = site.consts.get("k", 1)
        if k == 1:
            return idx, values
        B, N = idx.shape[0] // k, k * idx.shape[1]
        return idx.reshape(B, N), values.reshape(B, N, values.shape[-1])

    def _bag_rows(self, site: Site, idx: Tensor, grad: Tensor, bag_size: Tensor, weights: Tensor | None = None):
        """Each bag (one per row): every index gets grad_i (÷ bag size for mean, × its weight)."""
        B, D = grad.shape
        idx = idx.reshape(B, -1)
        values = grad.unsqueeze(1).expand(B, idx.shape[1], D)
        if site.consts["mode"] == 1:
            values = values / bag_size.clamp(min=1).to(values.dtype).view(B, 1, 1)
        if weights is not None:
            values = values * weights.reshape(B, -1, 1)
        if site.consts["padding_idx"] is not None and site.consts["padding_idx"] >= 0:
            values = values * (idx != site.consts["padding_idx"]).unsqueeze(-1)
        return idx, values

    def _table_rows(self, site: Site, idx: Tensor, values: Tensor, mask: Tensor | None = None):
        """Indices (rows, N) and masked values (rows, N, D); indices shared by the batch (one row for all
        samples, broadcast in the forward) are expanded, and the values are the per-row ones from
        before the backward's sum over the batch."""
        ibd, vbd = site.consts.get("idx_batch_dim", 0), site.consts.get("value_batch_dim", 0)
        values = values.movedim(vbd, 0) if vbd else values
        if site.consts.get("value_chain"):
            values = _replay(site.consts["value_chain"], values)
        B, D = values.shape[0], values.shape[-1]
        if ibd is None:
            N = idx.numel()
            idx = idx.reshape(1, N).expand(B, N)
            mask = None if mask is None else mask.reshape(1, N, 1)
        else:
            if ibd:
                idx, mask = idx.movedim(ibd, 0), None if mask is None else mask.movedim(ibd, 0)
            idx = idx.flatten(1) if idx.dim() > 2 else idx.unsqueeze(1) if idx.dim() == 1 else idx
            N = idx.shape[1]
            mask = None if mask is None else mask.reshape(B, N, 1)
        values = values.reshape(B, N, D)
        if mask is not None:
            values = values * mask
        elif site.consts["padding_idx"] is not None and site.consts["padding_idx"] >= 0:
            values = values * (idx != site.consts["padding_idx"]).unsqueeze(-1)
        return idx, values

    def per_sample(self, site: Site, *tensors: Tensor) -> Tensor:
        """g_i scattered into (B, V, D) (accumulated in float32 for half-precision values)."""
        idx, values = self._rows(site, *tensors)
        B, N = idx.shape
        rows = torch.arange(B, device=idx.device).unsqueeze(1).expand(B, N)
        out = values.new_zeros((B, *site.consts["table"]), dtype=accumulation_dtype(values.dtype))
        return out.index_put((rows, idx), values.to(out.dtype), accumulate=True).to(values.dtype)

    def _value_roundings(self, site: Site, tensors) -> int:
        """Roundings between the stored operands and the values: a mean bag's division and a bag's
        weights, 2 each (a division may run as a reciprocal and a product)."""
        if site.rule != "embedding_bag":
            return 0
        return 2 * ((site.consts["mode"] == 1) + (len(tensors) > 3))

    def _margins(self, site: Site, tensors, values: Tensor) -> tuple[Tensor, Tensor]:
        """(‖v_t‖ per position (B, N), 2γ_k·Σ_t ‖v_t‖: the values' own rounding, k roundings each)."""
        rho = row_norms(values)
        k = self._value_roundings(site, tensors)
        return rho, 2 * gamma(k, unit_roundoff(values.dtype)) * upper_sum(rho, [1])

    def ghost_norm_bound(self, site: Site, *tensors: Tensor) -> Bound:
        """[s, e, a]: Σ_ts [idx_t = idx_s] ⟨v_t, v_s⟩ plus its error bound; e: the scatter's rounding per unit c,
        (u + γ_N)·Σ_t ‖v_t‖, and the values' own rounding; a: what underflow in c·v_t adds (release_underflow)."""
        idx, values = self._rows(site, *tensors)
        rho, value_err = self._margins(site, tensors, values)
        vf = full_precision(values)
        u, eta, D = unit_roundoff(vf.dtype), SUBNORMAL[vf.dtype], vf.shape[-1]
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(vf.dtype)
        gram = torch.bmm(vf, vf.transpose(1, 2))
        ones = torch.ones_like(rho)
        s = gram_sum_bound(same.unsqueeze(1), gram.unsqueeze(1), ones.unsqueeze(1), rho.unsqueeze(1),
                           0.0, 0.0, gamma(D, u), D * eta)
        m = upper_sum(rho, [1])
        positions = torch.full_like(m, idx.shape[1])  # Σ_t ‖one-hot_t‖: what scales c·v_t's underflow
        absolute = release_underflow(positions, D, values.dtype, 0, prod(site.consts["table"]), values.dtype)
        return certified(s, clipped_product_margin(m, values.dtype, idx.shape[1]) + value_err, absolute, values.dtype)

    def per_sample_margin(self, site: Site, *tensors: Tensor) -> Tensor:
        """γ_N·Σ_t ‖v_t‖ (rows summed over N positions) and the values' own rounding."""
        idx, values = self._rows(site, *tensors)
        rho, value_err = self._margins(site, tensors, values)
        return accumulation_gamma(idx.shape[1], values.dtype) * upper_sum(rho, [1]) + value_err

    def ghost_factors(self, site: Site, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        """g_i = Σ_t e_{idx_t} ⊗ v_t: the indices (B, N), standing for one-hot rows, and the masked values
        (B, N, D) (tied uses' cross terms; a bag's rounded values are covered by its e)."""
        return self._rows(site, *tensors)

    def ghost_norm_sq(self, site: Site, *tensors: Tensor) -> Tensor:
        """Σ_ts [idx_t = idx_s] ⟨v_t, v_s⟩ per sample."""
        idx, values = self._rows(site, *tensors)
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(values.dtype)
        return (same * torch.bmm(values, values.transpose(1, 2))).sum((1, 2))

    def clipped_sum(self, site: Site, clip: Tensor, *tensors: Tensor) -> Tensor:
        """One scatter-add of clip-scaled values (dropped samples masked out; float32 for half precision)."""
        idx, values = self._rows(site, *tensors)
        values = masked_scaled(values, clip)
        out = values.new_zeros(site.consts["table"], dtype=accumulation_dtype(values.dtype))
        return out.index_put((idx,), values.to(out.dtype), accumulate=True).to(values.dtype)

    def cost(self, site: Site) -> dict[str, Cost]:
        s = site.shape  # p: table rows, d: width. Both scatter B·T·d values for the clipped sum.
        table = s.B * s.p * s.d * WORD
        return {"ghost": Cost(flops=2 * s.B * s.T**2 * (s.d + 1) + s.B * s.T * s.d, bytes=2 * s.B * s.T**2 * WORD),
                "per_sample": Cost(flops=2 * s.B * s.T * s.d + 2 * s.B * s.p * s.d, bytes=table, traffic=4 * table)}


def _index_layout(indices: fx.Node, values: fx.Node, batch: sympy.Expr):
    """(dim of the indices that holds the batch or None, the per-sample values node, its batch dim, the
    rows per sample k of that dim: 1, or K of size K·B, the ops that take a sample's rows to its values (()
    when they are its rows as they are), a padding index the per-sample values still need masked or None),
    or why there is none. The batch may be any one
    dim of the indices (``emb(x.transpose(0, 1))``).
    Indices with no batch dim are shared by the whole batch (a position or token-type embedding
    looked up with one row and broadcast): the backward sums the output gradient over the batch before
    the scatter, and sample b's gradient is the scatter of its own output gradient, read from before
    that sum."""
    idx_shape, value_shape = shape_of(indices), shape_of(values)
    views = views_of(indices)
    if not value_shape:
        return f"its values {value_shape} are not one row per index {idx_shape}"
    if not same(prod(value_shape), prod(idx_shape) * value_shape[-1]):
        unsummed = _unsummed_shared_rows(idx_shape, value_shape, batch, views)
        if unsummed is None:
            return f"its values {value_shape} are not one row per index {idx_shape}"
        if any(s.free_symbols & batch.free_symbols for s in idx_shape):
            return f"its indices {idx_shape} mix the batch ({batch}) with other dims"
        unmasked, padding = _padding_masked(values, indices)
        return None, unmasked, *unsummed, (), padding
    hits = [(i, k) for i, s in enumerate(idx_shape) if (k := rows_per_sample(s, batch, views))]
    unmasked, padding = _padding_masked(values, indices)
    found = _summed_over_batch(unmasked, batch, views)
    if found is not None and (not hits or batch.is_number):
        if any(s.free_symbols & batch.free_symbols for s in idx_shape):
            return f"its indices {idx_shape} mix the batch ({batch}) with other dims"
        return None, *found, padding
    if hits and hits[0][0] == 0:
        return 0, values, 0, hits[0][1], (), None
    if len(hits) == 1 and not batch.is_number:
        return hits[0][0], values, hits[0][0], hits[0][1], (), None
    if hits:
        return f"its indices {idx_shape} do not have the batch ({batch}) as their first dim"
    return (f"its indices {idx_shape} do not have the batch ({batch}) as a dim, and its values are not "
            "a sum over the batch of per-sample values (an index row shared by the batch)")


def _unsummed_shared_rows(idx_shape, value_shape, batch: sympy.Expr, views: int) -> tuple[int, int] | None:
    """(batch dim, rows per sample k) of values that are a shared index row's per-sample values not yet summed:
    the graph captured at a batch of one, where the backward of the index row's broadcast over the batch skips the
    sum (a sum over one sample), leaves values (..., B, ..., D) beside indices (..., 1, ...). Each sample's values
    are then its slice along that dim, as they are before the sum at any other batch size."""
    if len(value_shape) != len(idx_shape) + 1:
        return None
    differ = [d for d, (i, v) in enumerate(zip(idx_shape, value_shape[:-1])) if not same(i, v)]
    if len(differ) != 1 or not same(idx_shape[differ[0]], 1):
        return None
    k = rows_per_sample(value_shape[differ[0]], batch, views)
    return (differ[0], k) if k else None


def _padding_masked(values: fx.Node, indices: fx.Node) -> tuple[fx.Node, int | None]:
    """(X, p) when values is where(indices == p, 0, X) (torch 2.11's embedding backward masks the padding
    rows after the batch sum, so X is the sum); (X, None) when the mask is a constant False (inductor's
    CUDA graph folds it for constant indices); else (values, None)."""
    if values.target is not aten.where.self:
        return values, None
    cond, zero, x = values.args
    if not _is_zero(zero):
        return values, None
    if cond.target is aten.unsqueeze.default:
        cond = cond.args[0]
    if cond.target is aten.eq.Scalar and cond.args[0] is indices and isinstance(cond.args[1], int):
        return x, cond.args[1]
    if cond.target is aten.full.default and cond.args[1] is False:
        return x, None
    return values, None


def _is_zero(node) -> bool:
    """A zero number, scalar_tensor(0) or full(shape, 0) (inductor's CUDA joint graph turns the former into
    the latter)."""
    if isinstance(node, fx.Node) and node.target in (aten.scalar_tensor.default, aten.full.default):
        node = node.args[0] if node.target is aten.scalar_tensor.default else node.args[1]
    return isinstance(node, (int, float)) and not isinstance(node, bool) and node == 0


def _summed_over_batch(values: fx.Node, batch: sympy.Expr, views: int = 1) -> tuple[fx.Node, int, int, tuple] | None:
    """(X, batch dim, rows per sample k, chain) when values is X summed over its batch dim alone, then viewed and
    permuted; chain: () when a sample's values are X's rows as they are (views that keep the elements' order and
    the last dim),
    else the ops that take one sample's slice of X to its values (a relative-position bias table read with
    one index for the batch, then permuted to (heads, N, N) and added to every sample's attention scores)."""
    node, ops = values, []
    while node.target not in SumRule.ops:
        src = node.args[0] if node.args and (keeps_order(node) or node.target in PERMUTES) else None
        if not isinstance(src, fx.Node) or any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
            return None
        ops.append(node)
        node = src
    x = node.args[0]
    if not isinstance(x, fx.Node):
        return None
    dims = _summed_dims(node)
    shape = shape_of(x)
    k = rows_per_sample(shape[dims[0]], batch, views) if len(dims) == 1 else None
    if k is None:
        return None
    if all(keeps_order(n) for n in ops) and shape_of(values)[-1] == shape[-1] and dims[0] != len(shape) - 1:
        return x, dims[0], k, ()
    keepdim = len(node.args) > 2 and bool(node.args[2])
    chain = tuple((n.target, tuple(tuple(a) if isinstance(a, list) else a for a in n.args[1:]),
                   tuple(sorted(n.kwargs.items()))) for n in reversed(ops))
    return x, dims[0], k, ((torch.ops.aten.unsqueeze.default, (dims[0],), ()),) * keepdim + chain


def _replay(chain: tuple, values: Tensor) -> Tensor:
    """Each sample's values (rows of values, the batch first) through the ops of a value chain."""
    def one(v: Tensor) -> Tensor:
        for target, args, kwargs in chain:
            v = target(v, *args, **dict(kwargs))
        return v
    return torch.vmap(one)(values)


register(EmbeddingRule())
