"""Shapes pass: find every parameter-gradient term of the backward graph, match its rule, and
annotate it with a ``Site`` (operands and the sympy sizes B, T, d, p)."""
from __future__ import annotations

import operator

import networkx as nx
import sympy
import torch
import torch.fx as fx

from dpcompile.errors import UnsupportedOpError

from .meta import BATCH, PARAMS, SITE, VIEWS, ParamGrad, ParamSpec, PassContext, is_batched, resolved_batch
from .rules import RULES
from .rules.one_sample import guards_batch_of_one, one_sample_site
from .export import to_networkx
from .rules.layout import ORDER_PRESERVING

aten = torch.ops.aten
# Ops between a gradient term and the parameter's gradient output that are linear in the term.
LINEAR_IN_TERM = ORDER_PRESERVING | {aten.t.default, aten.permute.default, aten.transpose.int,
                                     aten.expand.default, aten.squeeze.dim, aten.unsqueeze.default}


# Ops that write a gradient term into part of a (usually zero) base: the gradient of a slice of a parameter.
SCATTERS = {aten.slice_scatter.default, aten.select_scatter.default, aten.diagonal_scatter.default,
            aten.as_strided_scatter.default}
ZEROS = {aten.full.default, aten.zeros.default, aten.new_zeros.default}


SCALINGS = {aten.mul.Tensor, aten.div.Tensor}


def scaled_term(node: fx.Node, constant: set[fx.Node]) -> fx.Node | None:
    """For term·c or term/c with c free of the batch (a number, or a tensor of parameters and
    buffers only, like eval-mode BatchNorm's rsqrt(running_var)): the term."""
    if node.target not in SCALINGS:
        return None
    a, b = node.args[:2]
    is_const = lambda v: not isinstance(v, fx.Node) or v in constant  # noqa: E731
    if isinstance(a, fx.Node) and a not in constant and is_const(b):
        return a
    if node.target is aten.mul.Tensor and isinstance(b, fx.Node) and b not in constant and is_const(a):
        return b
    return None


def linear_parts(node: fx.Node, constant: set[fx.Node]) -> tuple[list[fx.Node], bool] | None:
    """For an op linear in gradient terms (add, cat, scatter into a base, relabelling view, scaling by a
    batch-free tensor): the operands that carry terms, and whether it adds or scales them, after which
    per-sample norms no longer simply add. None for any other op."""
    if node.target is aten.add.Tensor and all(isinstance(a, fx.Node) for a in node.args[:2]):
        return list(node.args[:2]), True
    if node.target is aten.cat.default:
        return list(node.args[0]), False
    if node.target in SCATTERS:
        base, src = node.args[:2]
        return ([src], False) if base.target in ZEROS else ([src, base], True)
    if node.target in LINEAR_IN_TERM and isinstance(node.args[0], fx.Node):
        return [node.args[0]], False
    if (term := scaled_term(node, constant)) is not None:
        return [term], True
    return None


def gradient_terms(node: fx.Node, constant: set[fx.Node]) -> list[fx.Node]:
    """The nodes that make up this gradient through ops linear in them."""
    parts = linear_parts(node, constant)
    return [node] if parts is None else [t for part in parts[0] for t in gradient_terms(part, constant)]


def needs_chain(node: fx.Node, constant: set[fx.Node]) -> bool:
    """Whether the per-sample norm must follow the graph's ops after the terms (terms added onto each
    other, as for a shared parameter, or scaled); terms only relabelled or placed in disjoint parts
    (cat) keep their norms, which then simply add."""
    parts = linear_parts(node, constant)
    return parts is not None and (parts[1] or any(needs_chain(part, constant) for part in parts[0]))


def batch_free_nodes(gm: fx.GraphModule, batch: sympy.Expr) -> set[fx.Node]:
    """Nodes that depend on no batched input (only on parameters, buffers and constants)."""
    graph = to_networkx(gm)
    batched = [n.name for n in gm.graph.find_nodes(op="placeholder") if is_batched(n.meta.get("val"), batch)]
    tainted = set(batched).union(*(nx.descendants(graph, b) for b in batched)) if batched else set()
    return {n for n in gm.graph.nodes if n.name not in tainted and n.op != "output"}


def describe_op(node: fx.Node) -> str:
    """The ATen op that computes a node, for messages."""
    if node.target.__name__ == "getitem" and isinstance(node.args[0], fx.Node):
        return f"{node.args[0].target} (output {node.args[1]})"
    return str(node.target)


def module_of(param_name: str) -> str:
    """'features.0.weight' -> 'features.0' (the module path; '' is the model itself)."""
    return param_name.rpartition(".")[0] or "<model>"


def annotate_sites(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Write dp_site on each parameter-gradient term and dp_params/dp_batch/dp_views on the module."""
    outputs, batch = gm.graph.output_node().args[0], resolved_batch(gm, ctx.batch)
    gm.meta[VIEWS] = ctx.views  # the rules read it: a dim of size K·B is the batch, K rows per sample
    constant = batch_free_nodes(gm, batch)
    found = []
    for spec in ctx.params:
        grad = outputs[spec.output_index]
        if grad is None:
            continue
        terms = gradient_terms(grad, constant)
        for term in terms:
            term.meta[SITE] = match_term(term, spec, batch)
        found.append(ParamGrad(spec.name, spec.output_index, tuple(terms), needs_chain(grad, constant)))
    gm.meta[PARAMS], gm.meta[BATCH] = tuple(found), batch
    return gm


def match_term(term: fx.Node, spec: ParamSpec, batch: sympy.Expr):
    """The term's Site, or an error that names the parameter, its module and the op. In a graph that
    serves only a batch of one, a term no rule matches is the one sample's whole gradient."""
    rule = RULES.get(term.args[0].target if term.target is operator.getitem else term.target)
    site = rule.match(term, batch) if rule is not None else None
    if (rule is None or isinstance(site, str)) and guards_batch_of_one(term, batch):
        return one_sample_site(term)
    where = f"parameter '{spec.name}' of module '{module_of(spec.name)}'"
    if rule is None:
        raise UnsupportedOpError(
            f"{where} gets its gradient from {describe_op(term)}, which has no per-sample rule, so its "
            "gradient cannot be clipped per sample. Freeze it (requires_grad=False), replace the layer "
            "with a supported one (see the README's list), or add a rule in passes/rules/.")
    if isinstance(site, str):
        raise UnsupportedOpError(f"{where}: its gradient comes from {describe_op(term)}, but {site}.")
    return site
