"""A graph that serves only a batch of one (its shape environment guards the batch size to 1): a
parameter-gradient term that no other rule matches is then sample 0's gradient as it stands.

Torch specialises some layers' backward to a batch of one even with the batch dynamic (InstanceNorm's
weight.repeat(B) has no backward for B = 1; nn.MultiheadAttention with one head), leaving terms no
rule knows. With B = 1 guarded, the whole term is the one sample's: g_0 = term, instantiated.
"""
from __future__ import annotations

import sympy
import torch
import torch.fx as fx
from torch import Tensor

from ..meta import LayerShape, Site
from . import WORD, Cost

FAMILY = "one_sample"


def guards_batch_of_one(node: fx.Node, batch: sympy.Expr) -> bool:
    """Whether the shape environment of node's graph keeps the graph to one sample (batch_of_one_in)."""
    if batch == 1:
        return True
    if not isinstance(batch, sympy.Symbol):
        return False
    from torch._guards import detect_fake_mode
    env = getattr(detect_fake_mode([node.meta.get("val")]), "shape_env", None)
    return env is not None and batch_of_one_in(env, batch)


def batch_of_one_in(env, batch: sympy.Symbol) -> bool:
    """Whether a shape environment holds the guard batch == 1, or bounds the batch by 1 (a forward that guards
    B ≤ 1, as torch 2.11's convolution over a 1×2 image does): its graph runs only for one sample."""
    if env.replacements.get(batch) == 1:
        return True
    bounds = env.var_to_range.get(batch)
    if bounds is not None and bounds.upper <= 1:
        return True
    return any(pins_to_one(g.expr, batch) for g in env.guards)


def pins_to_one(guard: sympy.Basic, batch: sympy.Symbol) -> bool:
    """Whether a guard admits a batch of 1 and none of two or more: Eq(batch, 1), or Eq(3*batch, 3), which CUDA
    graphs recaptured at a batch of one hold (torch 2.11) with the batch otherwise left symbolic; or batch <= 1,
    which torch 2.11's convolution over a 1×2 image guards (its value range left wider)."""
    return linear_guard_truth(guard, batch, 1, 2) == (True, False)


def linear_guard_truth(guard: sympy.Basic, batch: sympy.Symbol, *sizes: int) -> tuple[bool, ...] | None:
    """A guard's truth at these batch sizes, where it is an equation or inequality linear in the batch alone (so
    true at two sizes means true between them, and true at 1 but false at 2 means false at every larger size);
    None otherwise. A polynomial's only: sympy.simplify asserts on some guards torch emits."""
    if not isinstance(guard, (sympy.Eq, sympy.Le, sympy.Lt, sympy.Ge, sympy.Gt)) or guard.free_symbols != {batch}:
        return None
    try:
        poly = sympy.Poly(guard.lhs - guard.rhs, batch)
    except sympy.PolynomialError:  # FloorDiv, Mod and the like: not a guard this reads
        return None
    return tuple(bool(guard.subs(batch, n)) for n in sizes) if poly.degree() == 1 else None


def one_sample_site(node: fx.Node) -> Site:
    numel = sympy.Integer(1)
    for s in node.meta["val"].shape:
        numel *= s.node.expr if isinstance(s, torch.SymInt) else int(s)
    one = sympy.Integer(1)
    return Site(FAMILY, (node,), {}, LayerShape(one, one, one, numel),
                op=f"{node.target} (the whole term: a batch of one)")


class OneSampleRule:
    family = FAMILY
    ops = ()
    methods = ("per_sample",)

    def per_sample(self, site: Site, term: Tensor) -> Tensor:
        """The term itself, as the gradient of sample 0 (shape (1, *term))."""
        return term.unsqueeze(0)

    def per_sample_margin(self, site: Site, term: Tensor) -> Tensor:
        """0: the per-sample gradient is the stored term itself, nothing is recomputed."""
        return torch.zeros(1, dtype=torch.float64, device=term.device)

    def cost(self, site: Site) -> dict[str, Cost]:
        return {"per_sample": Cost(flops=site.shape.p, bytes=site.shape.p * WORD)}


ONE_SAMPLE = OneSampleRule()
