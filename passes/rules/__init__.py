"""The rule table: per op family, how to recompute a parameter-gradient term per sample.

A rule knows, for the ATen ops in ``ops`` whose value is a parameter-gradient term:
- ``match(node, batch)``: the operands and constants it needs (a ``Site``), or an error message;
- ``per_sample(site, *tensors)``: the per-sample gradients, shape (B, *node's shape);
- ``ghost_norm_sq(site, *tensors)``: per-sample squared norms without per-sample gradients (optional);
- ``ghost_norm_bound(site, *tensors)``: the certified [s, e, a] per sample (``bounds``): the ghost norm with
  its floating-point error bound, the rounding of ``clipped_sum`` per unit clip factor, and its underflow;
- ``ghost_factors(site, *tensors)`` (optional): g_i = Σ_t x_t ⊗ y_t as per-sample rows (x, y), each (B, N, ·) or
  integer indices (B, N) standing for one-hot rows: what a tied parameter's cross terms are made of;
- ``per_sample_margin(site, *tensors)``: a bound on ‖ĝ_i − g_i‖ of ``per_sample``'s rounding;
- ``clipped_sum(site, clip, *tensors)``: Σ_i clip_i·g_i in one weight-gradient op (book-keeping), with
  clip (float64) rounded down and samples with clip_i = 0 masked out (``bounds.masked_scaled``);
- ``cost(site)``: each method the site allows, with its ``Cost`` as sympy expressions;
- ``implementation(site, method)`` (optional): how the rule forms its products under the planned method (the
  per-sample gradients, or a ghost term's Grams and clipped sum), a string the plan records (``Decision.impl``) and
  the rewrite hands back in ``Site.impl``;
- ``drop_recomputed_outputs(copied, terms)`` (optional, ops with several outputs): turn off, in the backward's
  copy of the op, the parameter-gradient outputs that the rewrite recomputes (terms: their getitem nodes);
- ``products`` (optional): its sites that are matrix products, by ``Site.rule``, and their kind, "matmul" (cuBLAS)
  or "conv" (cuDNN): the plan may put their fp32 products on TF32 tensor cores (``plan.tf32_products``;
  ``Site.tf32``), as PyTorch's settings do that kind's products in the model's own training.
Adding an op family is one module here plus its cases in tests/rule_cases.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import sympy
import torch.fx as fx
from torch import Tensor

from ..meta import LayerShape, Site
from .bounds import Bound

WORD = 4  # bytes of a float32


@dataclass(frozen=True)
class Cost:
    """Work of one method for one site, its clipped sum included: FLOPs, extra bytes held, and the
    bytes moved through memory for them (default: written once, read once), as sympy expressions."""

    flops: sympy.Expr
    bytes: sympy.Expr
    traffic: sympy.Expr | None = None

    @property
    def moved(self) -> sympy.Expr:
        return 2 * self.bytes if self.traffic is None else self.traffic


def generalized_linear_costs(s: LayerShape) -> dict[str, "Cost"]:
    """g_i = P_iᵀ Q_i (p × d per group, T positions). Ghost: two Gram matrices, 2BT²(p+d) (for T = 1,
    ‖P_i‖²‖Q_i‖²), then the book-keeping weight-gradient op, 2BTpd. Per-sample: the products, 2BTpd,
    then the clip-weighted sum, 2Bpd; the B·p·d per-sample gradients are written, read for the norm
    and read for the sum."""
    g = s.groups
    clipped = 2 * s.B * s.T * s.p * s.d * g
    gram = 2 * s.B * (s.p + s.d) * g if s.T == 1 else 2 * s.B * g * s.T**2 * (s.p + s.d)
    gram_bytes = 2 * s.B * g * WORD if s.T == 1 else 2 * s.B * g * s.T**2 * WORD
    per_sample_bytes = s.B * s.p * s.d * g * WORD
    return {"ghost": Cost(gram + clipped, gram_bytes),
            "per_sample": Cost(clipped + 2 * s.B * s.p * s.d * g, per_sample_bytes, 3 * per_sample_bytes)}


class Rule(Protocol):
    family: str
    ops: tuple
    methods: tuple[str, ...]

    def match(self, node: fx.Node, batch: sympy.Expr) -> Site | str: ...
    def per_sample(self, site: Site, *tensors: Tensor) -> Tensor: ...
    def ghost_norm_sq(self, site: Site, *tensors: Tensor) -> Tensor: ...
    def ghost_norm_bound(self, site: Site, *tensors: Tensor) -> Bound: ...
    def per_sample_margin(self, site: Site, *tensors: Tensor) -> Tensor: ...
    def clipped_sum(self, site: Site, clip: Tensor, *tensors: Tensor) -> Tensor: ...
    def cost(self, site: Site) -> dict[str, Cost]: ...


RULES: dict[object, Rule] = {}


def register(rule: Rule) -> Rule:
    """Put a rule in the table under each of its ops."""
    for op in rule.ops:
        assert op not in RULES, f"two rules claim {op}"
        RULES[op] = rule
    return rule


def rule_for(node: fx.Node) -> Rule | None:
    """The rule for a parameter-gradient term node (a getitem is looked up by its producer; a term of a
    graph that serves only a batch of one may be matched as the sample's whole gradient)."""
    site = node.meta.get("dp_site")
    if site is not None and site.rule == one_sample.FAMILY:
        return one_sample.ONE_SAMPLE
    target = node.target
    if target is _getitem and isinstance(node.args[0], fx.Node):
        target = node.args[0].target
    return RULES.get(target)


import operator  # noqa: E402

_getitem = operator.getitem

from . import conv, embedding, linear, one_sample, reduction  # noqa: E402,F401  (each module registers its rule)
