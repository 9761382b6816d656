"""Shapes pass: find every parameter-gradient term of the backward graph, match its rule, and
annotate it with a ``Site`` (operands and the sympy sizes B, T, d, p)."""
from __future__ import annotations

import operator

import networkx as nx
import sympy
import torch
import torch.fx as fx

from dpcompile.errors import UnsupportedOpError

from .meta import BATCH, PARAMS, SITE, VIEWS, ParamGrad, ParamSpec, PassContext, Site, is_batched, resolved_batch
from .rules import RULES
from .rules.one_sample import guards_batch_of_one, one_sample_site
from .export import to_networkx
from .rules.bounds import UNIT_ROUNDOFF, exact_cast
from .rules.layout import CASTS, ORDER_PRESERVING

aten = torch.ops.aten
# Ops between a gradient term and the parameter's gradient output that are linear in the term and keep its
# values (a relabelling: the norm is unchanged). Casts are relabellings only where exact (cast_parts).
LINEAR_IN_TERM = (ORDER_PRESERVING - CASTS) | {aten.t.default, aten.permute.default, aten.transpose.int,
                                               aten.squeeze.dim, aten.unsqueeze.default}
# Reductions over static sizes, linear in their one operand (the backward of a weight's own normalisation).
REDUCTIONS = {aten.sum.dim_IntList, aten.sum.default, aten.mean.dim}
# Ops that keep part of their operand: the gradient of a parameter that was concatenated with others (or with
# constants) before use, like BEiT's and EVA's q_bias and v_bias around a zero k bias.
SELECTIONS = {aten.slice.Tensor, aten.select.int}
# Ops linear in their first operand that change its norm: values repeated, negated, scaled, reduced or selected.
NORM_CHANGING = {aten.expand.default, aten.neg.default, aten.mul.Scalar, aten.div.Scalar} | REDUCTIONS | SELECTIONS
# Of those, the ops that are a term (a sum over the batch) or no linear op (a selection of samples) on a batched operand.
BATCH_SENSITIVE = REDUCTIONS | SELECTIONS


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


def linear_parts(node: fx.Node, constant: set[fx.Node], batch: sympy.Expr) -> tuple[list[fx.Node], bool] | None:
    """For an op linear in gradient terms (add, cat, scatter into a base, relabelling view, scaling by a
    batch-free tensor): the operands that carry terms, and whether it adds or scales them, after which
    per-sample norms no longer simply add. None for any other op."""
    if node.target in (aten.add.Tensor, aten.sub.Tensor):  # a batch-free operand would make it affine
        terms = node.args[:2]
        return (list(terms), True) if all(isinstance(a, fx.Node) and a not in constant for a in terms) else None
    if node.target is aten.cat.default:
        return list(node.args[0]), False
    if node.target in CASTS and isinstance(node.args[0], fx.Node):
        return cast_parts(node)
    if node.target in SCATTERS:
        base, src = node.args[:2]
        return ([src], False) if base.target in ZEROS else ([src, base], True)
    if node.target in LINEAR_IN_TERM and isinstance(node.args[0], fx.Node):
        return [node.args[0]], False
    if node.target in NORM_CHANGING and isinstance(node.args[0], fx.Node) and reduced_count(node) is not None \
            and not (node.target in BATCH_SENSITIVE and is_batched(node.args[0].meta["val"], batch)):
        # a sum over the batch is a term; a selection from a batched tensor would pick samples: no rule matches it
        return [node.args[0]], True
    if (term := scaled_term(node, constant)) is not None:
        return [term], True
    return None


def cast_parts(node: fx.Node) -> tuple[list[fx.Node], bool] | None:
    """A dtype conversion after the terms: exact (an upcast), a relabelling; a rounding to a dtype the bounds know
    (the gradient of a bf16 parameter the forward used as fp32, rounded to bf16 after the batch sum), an op that
    changes the norm, so the per-sample norm follows the graph's ops (emit_shared_norm counts its rounding); any
    other (float8, where a rounding moves values by up to 2⁻⁴ of themselves, or more near zero), no linear op."""
    src, dst = node.args[0].meta["val"].dtype, node.meta["val"].dtype
    if exact_cast(src, dst):
        return [node.args[0]], False
    return ([node.args[0]], True) if dst in UNIT_ROUNDOFF and src in UNIT_ROUNDOFF else None


def reduced_count(node: fx.Node) -> int | None:
    """How many values a reduction adds into each of its outputs (1 for any other op); None when that
    depends on a symbolic size (the rounding bound of the norm needs it as a number)."""
    if node.target not in REDUCTIONS:
        return 1
    sizes = node.args[0].meta["val"].shape
    dims = node.args[1] if node.target is not aten.sum.default and len(node.args) > 1 else None
    dims = range(len(sizes)) if not dims else [d % len(sizes) for d in dims]
    count = 1
    for d in dims:
        if not isinstance(sizes[d], int):
            return None
        count *= sizes[d]
    return count


def gradient_terms(node: fx.Node, constant: set[fx.Node], batch: sympy.Expr, seen: dict | None = None) -> list[fx.Node]:
    """The nodes that make up this gradient through ops linear in them, each once (a node reached along several
    paths, as in a weight normalisation's backward, is walked once)."""
    seen = {} if seen is None else seen
    if node not in seen:
        parts = linear_parts(node, constant, batch)
        seen[node] = [node] if parts is None else \
            list(dict.fromkeys(t for part in parts[0] for t in gradient_terms(part, constant, batch, seen)))
    return seen[node]


def needs_chain(node: fx.Node, constant: set[fx.Node], batch: sympy.Expr) -> bool:
    """Whether the per-sample norm must follow the graph's ops after the terms (terms added onto each
    other, as for a shared parameter, or scaled); terms only relabelled or placed in disjoint parts
    (cat) keep their norms, which then simply add."""
    parts = linear_parts(node, constant, batch)
    return parts is not None and (parts[1] or any(needs_chain(part, constant, batch) for part in parts[0]))


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
        terms = gradient_terms(grad, constant, batch)
        sites = [match_term(term, spec, batch) for term in terms]
        shared = needs_chain(grad, constant, batch)
        if None in sites:  # a graph for a batch of one: the whole gradient is the one sample's
            terms, sites, shared = [grad], [one_sample_site(grad)], False
        for term, site in zip(terms, sites):
            term.meta[SITE] = site
        found.append(ParamGrad(spec.name, spec.output_index, tuple(terms), shared))
    check_terms_in_one_group(found, ctx.clip.groups if ctx.clip is not None else ())
    gm.meta[PARAMS], gm.meta[BATCH] = tuple(found), batch
    return gm


def check_terms_in_one_group(found: list[ParamGrad], groups) -> None:
    """A term several parameters' gradients come from (a weight-normalised layer's g and v) is clipped once:
    those parameters must share a clip group."""
    group_of = {name: i for i, names in enumerate(groups) for name in names}
    users: dict[fx.Node, list[str]] = {}
    for p in found:
        for term in p.sites:
            users.setdefault(term, []).append(p.name)
    for term, names in users.items():
        if len({group_of.get(n) for n in names}) > 1:
            raise UnsupportedOpError(
                f"parameters {', '.join(map(repr, names))} of module '{module_of(names[0])}' get their gradients "
                f"from one term ({describe_op(term)}), which is clipped once: put them in one clip group.")


def match_term(term: fx.Node, spec: ParamSpec, batch: sympy.Expr) -> Site | None:
    """The term's Site, or an error that names the parameter, its module and the op. In a graph that
    serves only a batch of one, a term no rule matches gives None: the parameter's whole gradient is then
    the one sample's (a term's parts may feed each other, as in a weight's own normalisation)."""
    rule = RULES.get(term.args[0].target if term.target is operator.getitem else term.target)
    site = rule.match(term, batch) if rule is not None else None
    if (rule is None or isinstance(site, str)) and guards_batch_of_one(term, batch):
        return None
    where = f"parameter '{spec.name}' of module '{module_of(spec.name)}'"
    if rule is None and term.target in CASTS:
        src, dst = term.args[0].meta["val"].dtype, term.meta["val"].dtype
        raise UnsupportedOpError(
            f"{where} gets its gradient converted from {src} to {dst} ({describe_op(term)}) after its per-sample "
            "parts are summed: a rounding of the clipped sum that the clipping bound covers for float64, float32, "
            "bfloat16 and float16 only. Let the gradient skip the conversion (a straight-through form, "
            "w + (w.to(dtype).to(w.dtype) - w).detach()), or freeze the parameter (requires_grad=False).")
    if rule is None:
        raise UnsupportedOpError(
            f"{where} gets its gradient from {describe_op(term)}, which has no per-sample rule, so its "
            "gradient cannot be clipped per sample. Freeze it (requires_grad=False), replace the layer "
            "with a supported one (see the README's list), or add a rule in passes/rules/.")
    if isinstance(site, str):
        raise UnsupportedOpError(f"{where}: its gradient comes from {describe_op(term)}, but {site}.")
    return site
