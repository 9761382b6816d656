"""Tied parameters under ghost clipping: a 2-D parameter used several times (an embedding table reused as
the output layer, a layer applied twice) whose uses' terms reach its gradient only through additions,
transposes, same-shape views and exact upcasts.

With each use's per-sample gradient in factored form g^u_i = Σ_t x^u_t ⊗ y^u_t (the rule's
``ghost_factors``; integer indices stand for one-hot rows), the sample's squared norm is
‖Σ_u g^u_i‖² = Σ_u ‖g^u_i‖² + 2 Σ_{u<v} ⟨g^u_i, g^v_i⟩ with ⟨g^u, g^v⟩ = Σ_{t,s} (x^u_t·x^v_s)(y^u_t·y^v_s):
B·T_u·T_v numbers per pair instead of B × |parameter| per-sample gradients. Each cross term gets the
Gram form's floating-point bound (``bounds.product_sum_bound``); a gather of a dense factor at one-hot
indices and a comparison of two index rows are exact.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.fx as fx

from .emit import emit
from .meta import SITE, ParamGrad
from .rules import WORD, Cost, rule_for
from .rules.layout import CASTS
from .rules.bounds import (F64, U64, as_bounds, exact_cast, gamma, product_matrix, product_sum_bound, row_norms,
                           unit_roundoff)

aten, prims = torch.ops.aten, torch.ops.prims
FACTORED = {"linear", "embedding", "embedding_bag"}
SAME_SHAPE = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.alias.default,
              aten.clone.default}


@dataclass(frozen=True)
class TiedChain:
    """How a tied parameter's uses reach its gradient: per use, whether transposed; and the largest unit
    roundoff of the additions that join them."""

    flips: tuple[bool, ...]
    roundoff: float


def orientations(gm: fx.GraphModule, param: ParamGrad) -> TiedChain | None:
    """The chain from the uses' terms to the gradient; None unless the parameter is 2-D, every use has a
    factored ghost form, and the terms meet only through add, transpose, same-shape views and exact upcasts,
    each term reached once."""
    output = gm.graph.output_node().args[0][param.output_index]
    sites, found, adds = set(param.sites), {}, []
    if len(param.sites) < 2 or output.meta["val"].dim() != 2:
        return None
    if any(s.meta[SITE].rule not in FACTORED or not hasattr(rule_for(s), "ghost_factors") for s in sites):
        return None

    def walk(node, flip: bool) -> bool:
        if not isinstance(node, fx.Node) or node.meta["val"].dim() != 2:
            return False
        if node in sites:
            if node in found:  # a term added to itself would count twice in the gradient, once in the norm
                return False
            found[node] = flip
            return True
        if node.target is aten.add.Tensor and node.kwargs.get("alpha", 1) == 1 and len(node.args) == 2:
            adds.append(node)
            return walk(node.args[0], flip) and walk(node.args[1], flip)
        if _transposes(node):
            return walk(node.args[0], not flip)
        if node.target in SAME_SHAPE and node.args[0].meta["val"].shape == node.meta["val"].shape:
            return walk(node.args[0], flip)
        if node.target in CASTS and exact_cast(node.args[0].meta["val"].dtype, node.meta["val"].dtype):
            return walk(node.args[0], flip)
        return False

    if not walk(output, False) or set(found) != sites:
        return None
    return TiedChain(tuple(found[s] for s in param.sites),
                     max(unit_roundoff(a.meta["val"].dtype) for a in adds))


def _transposes(node: fx.Node) -> bool:
    """A 2-D transpose (t, transpose(0, 1), permute([1, 0]))."""
    if node.target is aten.t.default:
        return True
    if node.target is aten.permute.default:
        return [d % 2 for d in node.args[1]] == [1, 0]
    return node.target is aten.transpose.int and {d % 2 for d in node.args[1:3]} == {0, 1}


def tied_square_bound(squares: list[torch.Tensor], crosses: list[torch.Tensor]) -> torch.Tensor:
    """An upper bound on Σ_u s_u + 2 Σ_{u<v} X_uv, exactly, from the uses' squared-norm bounds and their cross terms'
    (float64, (B,)): the sum of J addends whose cross terms may cancel the rest, so its J − 1 additions err by up to
    γ_{J−1}·Σ|t_j|, an error not relative to the result. Adding 2γ_{J+1}·fl(Σ|t_j|) covers them, that product's
    roundings and the last addition's (the result is then at least γ_{J+1}·Σ|t_j| above the exact sum, which is
    ≥ ‖g‖² ≥ 0). Without it, [1 + 2⁻⁵², 1] and X = −1 summed to 0 against 2⁻⁵² exactly."""
    terms = list(squares) + [2 * x for x in crosses]
    total = functools.reduce(torch.add, terms)
    magnitude = functools.reduce(torch.add, [t.abs() for t in terms])
    return (total + magnitude * (2 * gamma(len(terms) + 1, U64))).clamp(min=0)


def cross_cost(sites: list[fx.Node]) -> Cost:
    """The cross terms' work: per pair two (T_u × T_v) Grams (or a gather) and their elementwise bound."""
    flops, bytes_ = 0, 0
    for i, u in enumerate(sites):
        for v in sites[i + 1:]:
            su, sv = u.meta[SITE].shape, v.meta[SITE].shape
            flops += 2 * su.B * su.T * sv.T * (su.p + su.d)
            bytes_ += 2 * su.B * su.T * sv.T * WORD
    return Cost(flops, bytes_)


def factor_products(x: torch.Tensor, y: torch.Tensor) -> tuple:
    """(Â (B, T, S), (r, r'), γ, e) with Â_ts ≈ x_t·y_s and |Â − A| ≤ γ·r_t r'_s + e, for factors x (B, T, ·)
    and y (B, S, ·), dense or integer indices (one-hot rows of the other's width)."""
    ones = lambda f: torch.ones(f.shape[:2], dtype=F64, device=f.device)  # noqa: E731
    exact = (ones(x), ones(y)), 0.0, 0.0
    if not x.is_floating_point() and not y.is_floating_point():
        return (x.unsqueeze(2) == y.unsqueeze(1)).to(F64), *exact
    if not x.is_floating_point():
        a, (ry, rx), g, e = factor_products(y, x)
        return a.transpose(1, 2), (rx, ry), g, e
    if not y.is_floating_point():  # x_t[idx_s]: a gather, exact (an index outside the table has zero values)
        idx = y.clamp(0, x.shape[-1] - 1).long().unsqueeze(1).expand(-1, x.shape[1], -1)
        return torch.gather(x, 2, idx), *exact
    a, g, e = product_matrix(x, y)
    return a, (row_norms(x), row_norms(y)), g, e


def cross_bound(fu: tuple, fv: tuple) -> torch.Tensor:
    """Upper bound on ⟨g^u_i, g^v_i⟩ (B,) from the two uses' factors in the parameter's orientation."""
    a, ra, ga, ea = factor_products(fu[0], fv[0])
    b, rb, gb, eb = factor_products(fu[1], fv[1])
    grouped = lambda r: (r[0].unsqueeze(1), r[1].unsqueeze(1))  # noqa: E731
    return product_sum_bound(a.unsqueeze(1), b.unsqueeze(1), grouped(ra), grouped(rb), ga, ea, gb, eb)


def emit_tied_norm(graph: fx.Graph, gm: fx.GraphModule, param: ParamGrad, terms: dict, env: dict) -> fx.Node:
    """[S, E, A] (three (B,) nodes) for a tied parameter whose uses were ghost-clipped (their [s_u, e_u, a_u] in terms):
    S ≥ max(0, Σ s_u + 2 Σ_{u<v} X_uv) ≥ ‖Σ_u g^u_i‖² (X_uv a cross term's upper bound; tied_square_bound, its
    own additions covered). E covers the release:
    each use's clipped sum x_u errs from c·g^u by c·(e_u + u_u·√s_u), and the k − 1 additions that join them
    by γ_{k−1}·Σ_u ‖x_u‖ ≤ γ_{k−1}·c·Σ_u (√s_u + e_u) (a partial sum's rounding is not relative to the final
    sum, which may cancel): E = Σ e_u + (u_u + γ_{k−1})·Σ_u (√s_u + e_u). The uses' underflow a_u passes through
    the same additions: A = (1 + u_u + γ_{k−1})·Σ a_u."""
    sites, chain = list(param.sites), orientations(gm, param)
    arity = [len(s.meta[SITE].inputs) for s in sites]
    rounding = max(unit_roundoff(s.meta["val"].dtype) for s in sites) + gamma(len(sites) - 1, chain.roundoff)

    def certified_tied_norm(*values):
        parts, operands, factors, start = values[:3 * len(sites)], values[3 * len(sites):], [], 0
        bounds = as_bounds(parts)
        for site, flip, n in zip(sites, chain.flips, arity):
            x, y = rule_for(site).ghost_factors(site.meta[SITE], *operands[start:start + n])
            factors.append((y, x) if flip else (x, y))
            start += n
        crosses = [cross_bound(factors[i], factors[j]) for i in range(len(sites)) for j in range(i + 1, len(sites))]
        s = tied_square_bound([b[0] for b in bounds], crosses)
        e = sum(b[1] + rounding * (b[0].sqrt() + b[1]) for b in bounds)
        a = sum(b[2] for b in bounds) * (1 + rounding)  # the uses' underflow, through the same additions
        return s, e, a

    inputs = [part for s in sites for part in terms[s][0]] + [env[a] for s in sites for a in s.meta[SITE].inputs]
    return emit(graph, certified_tied_norm, inputs, f"dp_norm_sq_{param.name.replace('.', '_')}")
