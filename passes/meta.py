"""The node.meta keys dpcompile's analyses write, in one place.

- ``dp_site``   on a backward node whose value is (a term of) a parameter gradient: a ``Site``
  (rule, operand nodes, constants, symbolic ``LayerShape``), written by ``shapes.annotate_sites``.
- ``dp_plan``   on the same nodes: a ``Decision`` (method, both methods' ``Cost``, reason),
  written by ``plan.plan_sites``.
- ``dp_params`` in ``GraphModule.meta``: a tuple of ``ParamGrad`` (parameter name, backward output
  index, the ``dp_site`` nodes that make up its gradient), written by ``shapes.annotate_sites``.
- ``dp_batch``  in ``GraphModule.meta``: the sympy expression of the batch size.
- ``dp_views``  in ``GraphModule.meta``: K, the augmented views per sample (augmentation multiplicity): a dim
  of size K·B holds sample b's views in rows b·K … b·K+K−1 (written by ``shapes.annotate_sites``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
import torch.fx as fx

from dpcompile.config import AUTO_EXTRA_MEMORY
from dpcompile.errors import DPCompileError  # noqa: F401  (re-exported for passes)

SITE = "dp_site"
PLAN = "dp_plan"
PARAMS = "dp_params"
BATCH = "dp_batch"
VIEWS = "dp_views"


@dataclass(frozen=True)
class LayerShape:
    """Sizes of a generalized linear layer: B samples, T positions, d inputs, p outputs, per group."""

    B: sympy.Expr
    T: sympy.Expr
    d: sympy.Expr
    p: sympy.Expr
    groups: int = 1


@dataclass(frozen=True)
class Site:
    """One parameter-gradient term and what its rule needs to recompute it per sample."""

    rule: str
    inputs: tuple[fx.Node, ...]
    consts: dict[str, Any] = field(default_factory=dict, hash=False)
    shape: LayerShape | None = None
    op: str = ""
    # what the plan chose for the term's method (rewrite.planned_site fills them in): how the rule forms the
    # per-sample gradients (its `implementation`), and whether its products run on TF32 tensor cores
    impl: str = ""
    tf32: bool = False


@dataclass(frozen=True)
class ParamGrad:
    """A trainable parameter, where its gradient leaves the backward graph, and its terms."""

    name: str
    output_index: int
    sites: tuple[fx.Node, ...]
    shared: bool = False  # terms are added or scaled: the per-sample norm follows the graph's ops after them


@dataclass(frozen=True)
class ParamSpec:
    """A trainable parameter: its name and its position among the backward graph's outputs."""

    name: str
    output_index: int


@dataclass(frozen=True)
class PassContext:
    """What the passes need beyond the graph: parameters, batch symbol, policy, clipping, the views
    per sample K (the user's (B, K, ...) arguments flattened to (B·K, ...) rows inside the capture), whether
    per-sample gradients and ghost terms' clipped sums are formed on TF32 tensor cores, and whether inductor lowers
    the graph (then each term's computed operands are pinned to one stored value: rewrite.stored)."""

    params: tuple[ParamSpec, ...]
    batch: sympy.Expr
    policy: str
    clip: Any  # rewrite.ClipSpec
    views: int = 1
    # the kinds of product (a rule's `products`: "matmul", "conv") formed on TF32 tensor cores: instantiated per-sample
    # gradients (tf32), ghost terms' clipped sums and Grams (ghost_tf32)
    tf32: frozenset[str] = frozenset()
    ghost_tf32: frozenset[str] = frozenset()
    inductor: bool = False
    # policy "auto": the share of the saved tensors its per-sample gradients may hold beyond "mixed"'s plan
    # (DPConfig.auto_extra_memory)
    auto_extra_memory: float = AUTO_EXTRA_MEMORY


def shape_of_value(value) -> tuple[sympy.Expr, ...]:
    """A (fake) tensor's shape as sympy expressions."""
    return tuple(s.node.expr if isinstance(s, torch.SymInt) else sympy.Integer(int(s)) for s in value.shape)


def involves_batch(size: sympy.Expr, batch: sympy.Expr) -> bool:
    """Whether a dimension's size depends on the batch size (equals it, for a static batch)."""
    if batch.free_symbols:
        return bool(size.free_symbols & batch.free_symbols)
    return size == batch


def is_batched(value, batch: sympy.Expr) -> bool:
    """Whether a (fake) tensor has a dimension whose size involves the batch."""
    return isinstance(value, torch.Tensor) and any(involves_batch(s, batch) for s in shape_of_value(value))


def resolved_batch(gm, batch: sympy.Expr) -> sympy.Expr:
    """The batch size as this graph knows it: the shape environment's replacement if it has one, or the
    symbol's value when no tensor shape in the graph mentions it (a graph specialised to a batch of one)."""
    from torch._guards import detect_fake_mode
    values = [n.meta["val"] for n in gm.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    env = getattr(detect_fake_mode(values), "shape_env", None)
    if env is None or not batch.free_symbols:
        return batch
    batch = sympy.sympify(env.replace(batch))
    mentioned = set().union(*(shape_of_value(v)[i].free_symbols for v in values for i in range(v.dim())))
    if batch.free_symbols and not batch.free_symbols & mentioned:
        return sympy.sympify(batch.xreplace(symbol_hints(env)))
    return batch


def symbol_hints(env) -> dict:
    """A shape environment's values of its backed size symbols (`backed_var_to_val`, `var_to_val` before torch 2.12)."""
    return env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val
