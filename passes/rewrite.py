"""Rewrite pass: a new backward graph that computes DP-SGD gradients in one backward pass.

For each parameter-gradient term: its per-sample squared norm by the planned method, at the place
the term used to be computed. Then one clip factor per sample (and clip group), the clipped sums
(book-keeping: the term's weight-gradient op on clip-scaled operands, or a contraction of the
instantiated per-sample gradients), the rest of the original graph, and finally
grad = (scale·Σ_i C_i ĝ_i + N(0, σ²R²)) / n, with ĝ_i the graph's own per-sample terms.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx
import torch
import torch.fx as fx

from .emit import emit
from .export import to_networkx
from .meta import PARAMS, PLAN, SITE, ParamGrad, PassContext
from .rules import rule_for

aten = torch.ops.aten
LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ClipSpec:
    """How samples are clipped and the gradient normalised: the rewrite's only options."""

    groups: tuple[tuple[str, ...], ...]   # parameter names per clip group
    bounds: tuple[float, ...]             # R per group
    loss_reduction: str = "mean"
    expected_batch_size: int | None = None
    clipping: str = "abadi"
    clip_stability: float = 0.01
    noise_handle: int | None = None       # dpcompile.ops noise source; None: no noise op


def rewrite_backward(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """A new GraphModule: the backward graph with clipped, noised, normalised parameter gradients."""
    spec: ClipSpec = ctx.clip
    params: tuple[ParamGrad, ...] = gm.meta[PARAMS]
    site_param = {node: p for p in params for node in p.sites}
    deferred = set().union(*(nx.descendants(to_networkx(gm), n.name) for n in site_param))
    deferred = {n for n in gm.graph.nodes if n.name in deferred and n.op != "output"} | set(site_param)

    graph, env = fx.Graph(), {}
    terms: dict[fx.Node, tuple] = {}
    for node in gm.graph.nodes:
        if node.op == "output" or node in deferred and node not in site_param:
            continue
        if node in site_param:
            terms[node] = emit_norm(graph, node, [env[a] for a in node.meta[SITE].inputs], site_param[node])
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node.target is aten.convolution_backward.default:
            drop_parameter_outputs(env[node], node, site_param)

    norms = {p.name: [emit_shared_norm(graph, gm, p, terms, env)] if p.shared else [terms[n][0] for n in p.sites]
             for p in params}
    clip = emit_clip_factors(graph, spec, norms)
    for node, p in site_param.items():
        env[node] = emit_clipped_sum(graph, node, [env[a] for a in node.meta[SITE].inputs], terms[node], clip[p.name], p)
    for node in gm.graph.nodes:
        if node in deferred and node not in site_param:
            env[node] = graph.node_copy(node, lambda n: env[n])

    outputs = list(fx.map_arg(gm.graph.output_node().args[0], lambda n: env[n]))
    finals = emit_finish(graph, spec, next(iter(clip.values())), [outputs[p.output_index] for p in params])
    for p, final in zip(params, finals):
        outputs[p.output_index] = final
    graph.output(tuple(outputs))
    new = fx.GraphModule(gm, graph, class_name="DPBackward")
    new.graph.eliminate_dead_code()
    new.graph.lint()
    new.recompile()
    new.meta.update(gm.meta)
    return new


def safe_name(param_name: str) -> str:
    """'blocks.0.fc.weight' -> 'blocks_0_fc_weight' (node names must be identifiers)."""
    return param_name.replace(".", "_")


def full_precision(fn: Callable) -> Callable:
    """fn on float32 copies of half-precision tensors (norms must not come out low)."""
    def wrapped(*ts):
        return fn(*(t.float() if t.dtype in LOW_PRECISION else t for t in ts))
    return wrapped


def planned_site(node: fx.Node):
    """The node's Site with the planned per-sample implementation filled in."""
    site, decision = node.meta[SITE], node.meta[PLAN]
    return dataclasses.replace(site, consts={**site.consts, "impl": decision.impl})


def emit_norm(graph: fx.Graph, node: fx.Node, inputs: Sequence[fx.Node], param: ParamGrad) -> tuple:
    """(squared norm per sample, per-sample gradients or None) for one term."""
    rule, site, method = rule_for(node), planned_site(node), node.meta[PLAN].method
    name = safe_name(param.name) + (f"_use{param.sites.index(node)}" if len(param.sites) > 1 else "")
    if method == "ghost":
        norm = emit(graph, full_precision(lambda *t: rule.ghost_norm_sq(site, *t)), inputs, f"dp_norm_sq_{name}")
        return norm, None
    shape = node.meta["val"].shape

    def per_sample_fn(*t):
        g = rule.per_sample(site, *t)
        return g.reshape(g.shape[0], *shape)
    per_sample = emit(graph, per_sample_fn, inputs, f"dp_per_sample_{name}")
    if param.shared:
        return None, per_sample
    norm = emit(graph, full_precision(lambda g: g.flatten(1).square().sum(1)), [per_sample], f"dp_norm_sq_{name}")
    return norm, per_sample


def emit_shared_norm(graph: fx.Graph, gm: fx.GraphModule, param: ParamGrad, terms, env) -> fx.Node:
    """A parameter whose terms are added (used several times) or scaled: its per-sample gradient is
    the graph's own ops after the terms applied to their per-sample values (vmapped over the batch),
    and its norm is that gradient's norm."""
    output = gm.graph.output_node().args[0][param.output_index]
    dag = to_networkx(gm)
    between = nx.ancestors(dag, output.name) | {output.name}
    reached = set().union(*(nx.descendants(dag, t.name) for t in param.sites))
    chain = [n for n in gm.graph.nodes if n.name in between and n.name in reached]
    inside = set(chain) | set(param.sites)
    outside = list(dict.fromkeys(a for n in chain for a in n.all_input_nodes if a not in inside))

    def per_sample(*values):
        term_values, outside_values = values[:len(param.sites)], values[len(param.sites):]

        def combine(*one_sample):
            vals = {**dict(zip(param.sites, one_sample)), **dict(zip(outside, outside_values))}
            for n in chain:
                args, kwargs = fx.map_arg(n.args, vals.__getitem__), fx.map_arg(n.kwargs, vals.__getitem__)
                vals[n] = pad_into_zeros(*args) if n.target in PADDABLE_SCATTERS else n.target(*args, **kwargs)
            return vals[output]
        return torch.func.vmap(combine)(*term_values)

    name = safe_name(param.name)
    inputs = [terms[t][1] for t in param.sites] + [env[n] for n in outside]
    per_sample_node = emit(graph, per_sample, inputs, f"dp_per_sample_{name}")
    return emit(graph, full_precision(lambda g: g.flatten(1).square().sum(1)), [per_sample_node], f"dp_norm_sq_{name}")


PADDABLE_SCATTERS = {aten.slice_scatter.default, aten.select_scatter.default}


def pad_into_zeros(base, src, dim, *where):
    """base + (src written into a slice of zeros), as a zero pad: vmaps without fixing the batch size."""
    dim, size = dim % base.dim(), base.shape[dim]
    if len(where) == 1:  # select_scatter(base, src, dim, index)
        start, stop, step = slice(where[0], where[0] + 1 or None).indices(size)
        src = src.unsqueeze(dim)
    else:  # slice_scatter(base, src, dim, start, end, step)
        start, stop, step = slice(*(list(where) + [None, None, None])[:3]).indices(size)
    assert step == 1, "strided slices of a shared parameter are not supported"
    return base + torch.nn.functional.pad(src, [0, 0] * (base.dim() - 1 - dim) + [start, size - stop])


def emit_clip_factors(graph: fx.Graph, spec: ClipSpec, by_param: dict[str, list[fx.Node]]) -> dict[str, fx.Node]:
    """One clip factor per sample for each clip group; returns parameter name -> factor node."""
    factors = {}
    for gi, (names, bound) in enumerate(zip(spec.groups, spec.bounds)):
        norms = [n for name in names for n in by_param.get(name, [])]
        if not norms:
            continue
        suffix = "" if len(spec.groups) == 1 else f"_group{gi}"
        fn = lambda *sq, bound=bound: clip_factor(torch.stack(sq).sum(0), bound, spec)  # noqa: E731
        factor = emit(graph, fn, norms, f"dp_clip_factor{suffix}")
        factors.update({name: factor for name in names})
    return factors


def clip_factor(norm_sq: torch.Tensor, bound: float, spec: ClipSpec) -> torch.Tensor:
    """C_i = min(1, R/(‖g_i‖ + 1e-6)) (Abadi) or R/(‖g_i‖ + γ) (automatic), ‖g_i‖ of the sample's own loss."""
    scale = norm_sq.shape[0] if spec.loss_reduction == "mean" else 1
    norm = norm_sq.sqrt() * scale
    if spec.clipping == "automatic":
        return bound / (norm + spec.clip_stability)
    return (bound / (norm + 1e-6)).clamp(max=1.0)


def emit_clipped_sum(graph, node, inputs, term, clip, param) -> fx.Node:
    """Σ_i C_i ĝ_i in the term's own layout."""
    rule, site = rule_for(node), planned_site(node)
    shape = node.meta["val"].shape
    name = f"dp_clipped_{safe_name(param.name)}"
    _, per_sample = term
    if per_sample is not None:
        return emit(graph, lambda c, g: weighted_sum(c, g).reshape(shape), [clip, per_sample], name)
    return emit(graph, lambda c, *t: rule.clipped_sum(site, c, *t).reshape(shape), [clip, *inputs], name)


def weighted_sum(c: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Σ_i c_i g_i over the leading (batch) dim, as one matrix product."""
    return torch.mm(c.to(g.dtype).unsqueeze(0), g.reshape(g.shape[0], -1))


def emit_finish(graph, spec: ClipSpec, clip: fx.Node, grads: list[fx.Node]) -> list[fx.Node]:
    """grad = (scale·clipped + noise) / n for every parameter, with one noise draw for all."""
    from dpcompile.ops import gaussian_noise

    def finish(c, *gs):
        batch = c.shape[0]
        scale = batch if spec.loss_reduction == "mean" else 1
        n = spec.expected_batch_size or scale
        if spec.noise_handle is None:
            return tuple(g * scale / n for g in gs)
        numels = [g.numel() for g in gs]
        noise = gaussian_noise(gs[0], sum(numels), spec.noise_handle)
        outs, start = [], 0
        for g, k in zip(gs, numels):
            outs.append((g * scale + noise[start:start + k].view(g.shape).to(g.dtype)) / n)
            start += k
        return tuple(outs)

    return list(emit(graph, finish, [clip, *grads], "dp_grad"))


def drop_parameter_outputs(new_node: fx.Node, old_node: fx.Node, site_param) -> None:
    """Turn off a convolution_backward's weight/bias outputs that the rewrite recomputes."""
    mask = list(new_node.args[10])
    for user in old_node.users:
        if user in site_param:
            mask[user.args[1]] = False
    new_node.args = (*new_node.args[:10], mask)
