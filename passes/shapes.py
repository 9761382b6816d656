"""Shapes pass: find every parameter-gradient term of the backward graph, match its rule, and
annotate it with a ``Site`` (operands and the sympy sizes B, T, d, p)."""
from __future__ import annotations

import sympy
import torch
import torch.fx as fx

from dpcompile.errors import UnsupportedOpError

from .meta import BATCH, PARAMS, SITE, ParamGrad, ParamSpec, PassContext
from .rules import rule_for
from .rules.layout import ORDER_PRESERVING

aten = torch.ops.aten
# Ops between a gradient term and the parameter's gradient output that are linear in the term.
LINEAR_IN_TERM = ORDER_PRESERVING | {aten.t.default, aten.permute.default, aten.transpose.int,
                                     aten.expand.default, aten.squeeze.dim, aten.unsqueeze.default}


# Ops that write a gradient term into part of a (usually zero) base: the gradient of a slice of a parameter.
SCATTERS = {aten.slice_scatter.default, aten.select_scatter.default, aten.diagonal_scatter.default,
            aten.as_strided_scatter.default}
ZEROS = {aten.full.default, aten.zeros.default, aten.new_zeros.default}


def gradient_terms(node: fx.Node) -> list[fx.Node]:
    """The nodes whose sum, through linear relabelling ops, is this gradient."""
    if node.target is aten.add.Tensor and all(isinstance(a, fx.Node) for a in node.args[:2]):
        return gradient_terms(node.args[0]) + gradient_terms(node.args[1])
    if node.target is aten.cat.default:
        return [t for part in node.args[0] for t in gradient_terms(part)]
    if node.target in SCATTERS:
        base, src = node.args[:2]
        return gradient_terms(src) + ([] if base.target in ZEROS else gradient_terms(base))
    if node.target in LINEAR_IN_TERM and isinstance(node.args[0], fx.Node):
        return gradient_terms(node.args[0])
    return [node]


def terms_overlap(node: fx.Node) -> bool:
    """Whether gradient terms are added onto each other (a shared parameter), rather than placed in
    disjoint parts of it (cat), where per-sample squared norms simply add."""
    if node.target is aten.add.Tensor and all(isinstance(a, fx.Node) for a in node.args[:2]):
        return True
    if node.target is aten.cat.default:
        return any(terms_overlap(part) for part in node.args[0])
    if node.target in SCATTERS:
        return node.args[0].target not in ZEROS or terms_overlap(node.args[1])
    if node.target in LINEAR_IN_TERM and isinstance(node.args[0], fx.Node):
        return terms_overlap(node.args[0])
    return False


def describe_op(node: fx.Node) -> str:
    """The ATen op that computes a node, for messages."""
    if node.target.__name__ == "getitem" and isinstance(node.args[0], fx.Node):
        return f"{node.args[0].target} (output {node.args[1]})"
    return str(node.target)


def module_of(param_name: str) -> str:
    """'features.0.weight' -> 'features.0' (the module path; '' is the model itself)."""
    return param_name.rpartition(".")[0] or "<model>"


def annotate_sites(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Write dp_site on each parameter-gradient term and dp_params/dp_batch on the module."""
    outputs, batch = gm.graph.output_node().args[0], ctx.batch
    found = []
    for spec in ctx.params:
        grad = outputs[spec.output_index]
        if grad is None:
            continue
        terms = gradient_terms(grad)
        for term in terms:
            term.meta[SITE] = match_term(term, spec, batch)
        found.append(ParamGrad(spec.name, spec.output_index, tuple(terms), terms_overlap(grad)))
    gm.meta[PARAMS], gm.meta[BATCH] = tuple(found), batch
    return gm


def match_term(term: fx.Node, spec: ParamSpec, batch: sympy.Expr):
    """The term's Site, or an error that names the parameter, its module and the op."""
    rule = rule_for(term)
    where = f"parameter '{spec.name}' of module '{module_of(spec.name)}'"
    if rule is None:
        raise UnsupportedOpError(
            f"{where} gets its gradient from {describe_op(term)}, which has no per-sample rule, so its "
            "gradient cannot be clipped per sample. Freeze it (requires_grad=False), replace the layer "
            "with a supported one (see the README's list), or add a rule in passes/rules/.")
    site = rule.match(term, batch)
    if isinstance(site, str):
        raise UnsupportedOpError(f"{where}: its gradient comes from {describe_op(term)}, but {site}.")
    return site
