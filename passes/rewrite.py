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

from dpcompile.errors import ConfigError
from dpcompile.ops import (lower_gram_sums, lower_half_bmm, lower_per_sample_conv2d_grad, lower_released,
                           lower_stored_as_inductor_pin)

from .emit import emit, fresh_value, graph_module, with_provenance
from .export import to_networkx
from .meta import PARAMS, PLAN, SITE, ParamGrad, PassContext
from .rules import RULES, rule_for
from .rules.one_sample import FAMILY as ONE_SAMPLE
from .tied import emit_tied_norm
from .rules.bounds import (SMALLEST_NORMAL, Bound, accumulation_gamma, as_bounds, cover, gamma, masked_scaled,
                          per_sample_bound, round_down, stored_norm_bound, unit_roundoff)
from .rules.layout import CASTS, ORDER_PRESERVING, PERMUTES, to_sample_shape
from .shapes import reduced_count

STORE = torch.ops.dpcompile.stored.default
RELEASED = torch.ops.dpcompile.released.default
# Devices where inductor lowers the released gradients as one horizontally fused group (dpcompile.ops.released: the
# finishes that stand alone, after a clipped sum from an extern kernel, launched as a few combo kernels instead of one
# kernel each). The values are the same (the group adds no arithmetic). On an H100 (torch 2.11) it took ResNet-50 (GN)
# 224² fp32 from 865 to 766 launches a step and 1.1% off its device time, the same peak; off until its host time is
# measured in one process, the host's drift between processes having been larger than the effect (benchmarks/NOTES.md,
# sixty-fifth session).
FOREACH_RELEASE_DEVICES: tuple[str, ...] = ()

aten = torch.ops.aten


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
    if not params:
        raise ConfigError(
            "the captured graph has no trainable parameter whose gradient it computes, only gradients of its inputs: "
            "there is nothing to clip and release, and an input's gradient is per-sample data. Compile the model "
            "whose parameters are trained (torch.compile(model, fullgraph=True, backend=dpcompile.backend(...))), "
            "with inputs that do not require grad")
    site_param = {node: p for p in params for node in p.sites}
    after = descendants(gm.graph, site_param) - set(site_param)  # what reads a term, directly or not
    chain = between_terms_and_release(gm, params, site_param)    # of those, what the released gradients are made of
    unclipped = read_unclipped(gm, params, site_param)           # what needs the graph's own values (input gradients)

    graph, env = fx.Graph(), {}
    if ctx.inductor:
        lower_stored_as_inductor_pin()
        lower_per_sample_conv2d_grad()
        lower_half_bmm()
        lower_gram_sums()
        lower_released()
    terms: dict[fx.Node, tuple] = {}
    released: dict[fx.Node, fx.Node] = {}  # a term's clipped sum, and the ops after it, by the original node
    for node in gm.graph.nodes:  # the graph's own values: everything but the release's chain
        if node.op == "output" or node in after and node not in unclipped:
            continue
        if node in site_param:
            if node.meta[SITE].rule == ONE_SAMPLE or node in unclipped:  # the term as it stands: the one sample's
                env[node] = graph.node_copy(node, lambda n: env[n])     # gradient, or a value other ops read
            if ctx.inductor:  # what the norm and the clipped sum read: stored once, read by both
                for a in node.meta[SITE].inputs:
                    env[a] = stored(graph, env[a])
            terms[node] = emit_norm(graph, node, [env[a] for a in node.meta[SITE].inputs], site_param[node],
                                    ctx.inductor)
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
        producer_rule = RULES.get(node.target)  # a multi-output op whose parameter outputs the rewrite recomputes
        if hasattr(producer_rule, "drop_recomputed_outputs"):
            producer_rule.drop_recomputed_outputs(env[node], [u for u in node.users
                                                              if u in site_param and u not in unclipped])

    norms, combined = {}, {}  # combined: a shared parameter's per-sample gradients, where instantiated
    for p in params:
        if p.shared:
            norm, combined[p.name] = shared_norm(graph, gm, p, terms, env)
            norms[p.name] = [norm]
        else:
            norms[p.name] = [terms[n][0] for n in p.sites]
    clip, dropped = emit_clip_factors(graph, spec, norms)
    in_dtype: dict = {}  # (factor, dtype) -> the factor as the terms of that dtype read it
    for node, p in site_param.items():
        dtype = node.meta["val"].dtype  # a SATURATED term is scaled and summed in float32 (emit_clipped_sum)
        factor = clip_in_dtype(graph, clip[p.name], torch.float32 if dtype in SATURATED else dtype, in_dtype,
                               ctx.inductor)
        released[node] = emit_clipped_sum(graph, node, [env[a] for a in node.meta[SITE].inputs], terms[node], factor,
                                          p)
    for node in gm.graph.nodes:  # the ops after the terms, on the clipped sums (the graph's own values around them)
        if node in after and (node in chain or node not in unclipped):
            released[node] = graph.node_copy(node, lambda n: released[n] if n in released else env[n])
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor) and value.dtype in SATURATED and node.target not in RELABELS:
                # an op after the batch sum (an add of uses, a cast) may overflow
                released[node] = emit(graph, lambda x: narrow_saturated(x, x.dtype), [released[node]],
                                      f"dp_saturated_{node.name}", key="saturated")

    for p in params:  # an instantiated shared parameter: Σ_i c_i g_i of its per-sample gradients, its uses joined
        if combined.get(p.name) is not None:  # per sample (the uses' clipped sums, which the ops above join, go dead)
            output = gm.graph.output_node().args[0][p.output_index]
            released[output] = emit_combined_sum(graph, output, combined[p.name], clip[p.name], in_dtype, ctx, p)

    outputs = list(fx.map_arg(gm.graph.output_node().args[0], lambda n: env[n] if n in env else released[n]))
    for p in params:
        outputs[p.output_index] = released[gm.graph.output_node().args[0][p.output_index]]
    finals = emit_finish(graph, spec, next(iter(clip.values())), [outputs[p.output_index] for p in params], dropped)
    if ctx.inductor and len(finals) > 1 and finals[0].meta["val"].device.type in FOREACH_RELEASE_DEVICES:
        finals = emit(graph, lambda *gs: RELEASED(list(gs)), finals, "dp_released")
    for p, final in zip(params, finals):
        outputs[p.output_index] = final
    graph.output(tuple(outputs))
    graph.eliminate_dead_code()  # the lint follows in run_pipeline
    new = graph_module(gm, graph, "DPBackward")  # its code generated where it is run, from the final graph
    # not the analyses (dp_*): they point into gm's nodes, which this graph does not hold; gm keeps them (explain)
    new.meta.update({k: v for k, v in gm.meta.items() if not k.startswith("dp_")})
    return new


def stored(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """node pinned to one stored tensor for inductor (dpcompile::stored at its own strides, which inductor lowers as
    prims.inductor_force_stride_order: the producer stored once, a no-op where it is stored already), for a term's
    operands and per-sample gradients. Inductor may otherwise inline a pointwise producer into each kernel that reads
    it, so that the norm's kernel and the clipped sum's compute it twice, and under FMA contraction two kernels may
    round one expression differently: the certified norm would then bound other values than the ones released. Only
    for graphs inductor lowers: run eagerly, the op copies to the strides traced, which a size-1 dimension may not
    have. Not the prim itself: its fake function copies and checks for overlap, which asks whether the batch is 1;
    inductor's fake-tensor pass over the graph then guarded the batch (≠ 1), and a batch of one recompiled the model
    (dpcompile.ops.stored). The pin's value is node's own (same sizes and strides), so it is written, not traced."""
    value = node.meta.get("val")
    if node.op == "placeholder" or not isinstance(value, torch.Tensor) or node.target is STORE:
        return node  # a graph input is stored; a pin needs no second one
    strides = value.stride()
    if not all(isinstance(s, int) for s in strides):  # symbolic strides: sym_stride nodes, traced
        strides = emit(graph, lambda t: t.stride(), [node], f"dp_strides_{node.name}", key="strides")
    pin = graph.create_node("call_function", STORE, (node, list(strides)), name=f"dp_stored_{node.name}")
    with_provenance(pin)
    pin.meta["val"] = fresh_value(value)
    return pin


def between_terms_and_release(gm: fx.GraphModule, params: Sequence[ParamGrad], terms) -> set[fx.Node]:
    """The ops between the parameter-gradient terms and the parameters' gradient outputs (a shared parameter's add of
    its uses, a view to the parameter's shape): walked back from the gradient outputs, stopping at the terms (what is
    above a term is its operands), and below a term. These are what the clipped sums go through."""
    outputs = gm.graph.output_node().args[0]
    upstream = {outputs[p.output_index] for p in params}
    for node in reversed(gm.graph.nodes):
        if node in upstream and node not in terms:
            upstream.update(node.all_input_nodes)
    return descendants(gm.graph, terms) & upstream - set(terms)


def read_unclipped(gm: fx.GraphModule, params: Sequence[ParamGrad], terms) -> set[fx.Node]:
    """The nodes whose own value (not a clipped sum) the rewritten graph needs: the graph's other outputs (the input
    gradients), the terms' operands and the one-sample terms (copied as they stand), and all they are computed from.
    A term or an op after it can be among them: in a graph for a batch of one, a term no rule matches is the
    parameter's whole gradient, and that value may also feed the input gradient (InstanceNorm's bias gradient,
    grad_out summed over the sample's positions, is the mean its input gradient subtracts). The input gradient must
    get the graph's own value (the sample's true gradient, from which the layers below compute their terms), never
    the clipped sum; such a term is computed twice, as it stands for those readers and clipped for the release."""
    outputs = gm.graph.output_node().args[0]
    released = {p.output_index for p in params}
    needed = {n for i, n in enumerate(outputs) if i not in released and isinstance(n, fx.Node)}
    needed.update(t for t in terms if t.meta[SITE].rule == ONE_SAMPLE)  # copied as it stands, from its own args
    needed.update(a for t in terms for a in t.meta[SITE].inputs if isinstance(a, fx.Node))
    for node in reversed(gm.graph.nodes):
        if node in needed:
            needed.update(node.all_input_nodes)
    return needed


def descendants(graph: fx.Graph, roots) -> set[fx.Node]:
    """The roots and every node that uses them, directly or not (one sweep in graph order), output aside."""
    reached = set(roots)
    for node in graph.nodes:
        if node.op != "output" and any(a in reached for a in node.all_input_nodes):
            reached.add(node)
    return reached


def safe_name(param_name: str) -> str:
    """'blocks.0.fc.weight' -> 'blocks_0_fc_weight' (node names must be identifiers)."""
    return param_name.replace(".", "_")


def planned_site(node: fx.Node):
    """The node's Site with the planned per-sample implementation filled in."""
    site, decision = node.meta[SITE], node.meta[PLAN]
    return dataclasses.replace(site, impl=decision.impl, tf32=decision.tf32)


def emit_norm(graph: fx.Graph, node: fx.Node, inputs: Sequence[fx.Node], param: ParamGrad,
              store: bool = False) -> tuple:
    """(certified norm [s, e, a]: three (B,) nodes, per-sample gradients or None) for one term; for a use of a
    shared parameter (margin ‖ĝ_i − g_i‖ per sample, per-sample gradients)."""
    rule, site, method = rule_for(node), planned_site(node), node.meta[PLAN].method
    name = safe_name(param.name) + (f"_use{param.sites.index(node)}" if len(param.sites) > 1 else "")
    shape = node.meta["val"].shape
    key = snippet_key(rule, site, shape)
    if method == "ghost":
        return emit(graph, lambda *t: rule.ghost_norm_bound(site, *t), inputs, f"dp_norm_sq_{name}",
                    key=("ghost", key)), None

    def per_sample_fn(*t):
        return to_sample_shape(rule.per_sample(site, *t), shape)
    per_sample = emit(graph, per_sample_fn, inputs, f"dp_per_sample_{name}", key=("per_sample", key))
    if store:
        per_sample = stored(graph, per_sample)
    if param.shared:
        return emit(graph, lambda *t: rule.per_sample_margin(site, *t), inputs, f"dp_margin_{name}",
                    key=("margin", key)), per_sample
    if site.tf32:  # what is released is c·ĝ, TF32's own gradient: its norm bounds that, no margin
        bound = emit(graph, lambda g: per_sample_bound(g, 0.0),
                     [per_sample], f"dp_norm_sq_{name}", key=("bound_tf32", key))
        return bound, per_sample
    bound = emit(graph, lambda g, *t: per_sample_bound(g, rule.per_sample_margin(site, *t)), [per_sample, *inputs],
                 f"dp_norm_sq_{name}", key=("bound", key))
    return bound, per_sample


def snippet_key(rule, site, shape) -> tuple:
    """What a term's snippets depend on besides their operands' metadata: the rule, the site's constants, the
    plan's implementation and TF32 choice, layer shape, and the term's shape (layers alike in these share one
    trace)."""
    return (type(rule).__qualname__, site.rule, repr(site.consts), site.impl, site.tf32, repr(site.shape),
            tuple(map(str, shape)))


def shared_norm(graph: fx.Graph, gm: fx.GraphModule, param: ParamGrad, terms, env) -> tuple[fx.Node, fx.Node | None]:
    """A shared parameter's certified norm, and its per-sample gradients where they are formed (None for ghost-clipped
    tied uses): from its ghost-clipped tied uses and their cross terms, or from its uses' per-sample gradients through
    the graph's own ops."""
    if all(n.meta[PLAN].flip is not None for n in param.sites):
        return emit_tied_norm(graph, gm, param, terms, env), None
    return emit_shared_norm(graph, gm, param, terms, env)


def emit_combined_sum(graph: fx.Graph, output: fx.Node, combined: fx.Node, clip: fx.Node, in_dtype: dict,
                      ctx: PassContext, param: ParamGrad) -> fx.Node:
    """Σ_i c_i g_i for a shared parameter from its per-sample gradients g_i (its uses already joined per sample), in
    the gradient output's shape. Its uses' clipped sums, joined after the batch sum, let one sample whose uses cancel
    (a weight applied to x and to −x) keep each use's partial sum at about R/u, where the other samples' terms were
    absorbed: one sample moved a release by 31.9·R (found by probing). Here each sample adds c_i·g_i, at most R."""
    shape, dtype = output.meta["val"].shape, output.meta["val"].dtype
    factor = clip_in_dtype(graph, clip, torch.float32 if dtype in SATURATED else dtype, in_dtype, ctx.inductor)
    return emit(graph, lambda c, g: narrow_saturated(weighted_sum(c, g), dtype).reshape(shape), [factor, combined],
                f"dp_clipped_{safe_name(param.name)}", key=("weighted_sum", tuple(map(str, shape))))


def emit_shared_norm(graph: fx.Graph, gm: fx.GraphModule, param: ParamGrad, terms, env) -> tuple[fx.Node, fx.Node]:
    """A parameter whose terms are added (used several times) or scaled: its per-sample gradient is
    the graph's own ops after the terms applied to their per-sample values (vmapped over the batch).
    Certified norm: ‖g_i‖ ≤ (1 + 2u)‖ĝ_i‖ + 2θ/(1−θ)·‖|chain|(|ĝ|)‖ + Σ margins, where |chain| is the chain's ops
    on absolute values (an elementwise bound on what rounding in the chain, or in the clipped terms it is
    applied to, can move) and θ = u + Σ_ops (n_op − 1)·u_acc + u_op its relative rounding (n_op values added per
    output by a reduction, 1 for any other op; u_op of the op's result dtype, u_acc of its accumulation)."""
    output = gm.graph.output_node().args[0][param.output_index]
    dag = to_networkx(gm)
    between = nx.ancestors(dag, output.name) | {output.name}
    reached = set().union(*(nx.descendants(dag, t.name) for t in param.sites))
    chain = [n for n in gm.graph.nodes if n.name in between and n.name in reached]
    inside = set(chain) | set(param.sites)
    outside = list(dict.fromkeys(a for n in chain for a in n.all_input_nodes if a not in inside))
    k = len(param.sites)
    chain_rounding = sum(map(rounding_of, chain))

    def run_chain(term_values, outside_values, absolute: bool):
        def combine(*one_sample):
            vals = {**dict(zip(param.sites, one_sample)), **dict(zip(outside, outside_values))}
            for n in chain:
                args, kwargs = fx.map_arg(n.args, vals.__getitem__), fx.map_arg(n.kwargs, vals.__getitem__)
                target = n.target
                if absolute:
                    target, args, kwargs = absolute_op(target, args, kwargs)
                target = BATCHABLE.get(target, target)
                vals[n] = pad_into_zeros(*args) if target in PADDABLE_SCATTERS else target(*args, **kwargs)
            return vals[output]
        return torch.func.vmap(combine)(*term_values)

    def combined_gradients(*values):
        return run_chain(values[:k], values[k:], False)

    def certified_norm(combined, *values):
        term_values, margins, outside_values = values[:k], values[k:2 * k], values[2 * k:]
        magnitude = run_chain([t.abs() for t in term_values],
                              [o.abs() if isinstance(o, torch.Tensor) and o.is_floating_point() else o
                               for o in outside_values], True)
        u = max(unit_roundoff(t.dtype) for t in (*term_values, combined, magnitude))
        rounding = 2 * gamma(1, chain_rounding + u) * (1 + 2 * u) * stored_norm_bound(magnitude).sqrt()
        return per_sample_bound(combined, torch.stack(margins).sum(0) + rounding)

    name = safe_name(param.name)
    per_sample, outside_nodes = [terms[t][1] for t in param.sites], [env[n] for n in outside]
    combined = emit(graph, combined_gradients, per_sample + outside_nodes, f"dp_per_sample_{name}")
    inputs = [combined] + per_sample + [terms[t][0] for t in param.sites] + outside_nodes
    return emit(graph, certified_norm, inputs, f"dp_norm_sq_{name}"), combined


def rounding_of(node: fx.Node) -> float:
    """Relative rounding one chain op can add: γ_acc(n − 1) + u for a reduction of n values per output into
    dtype with roundoff u (bounds.accumulation_gamma), u for any other op (0 for an integer result)."""
    value = node.meta["val"]
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return 0.0
    n = reduced_count(node)
    return (accumulation_gamma(n - 1, value.dtype) if n > 1 else 0.0) + unit_roundoff(value.dtype)


SIGN_FREE = {aten.sub.Tensor: aten.add.Tensor, aten.sub.Scalar: aten.add.Scalar}
SCALING = {aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.add.Tensor, aten.add.Scalar}


def absolute_op(target, args, kwargs):
    """The op on absolute values that bounds |op(a, b)| elementwise for the linear ops of a chain:
    a − b ↦ |a| + |b|, −a ↦ |a|, numbers (an alpha too) as their absolute values."""
    if target is aten.neg.default:
        return aten.alias.default, args, kwargs
    target = SIGN_FREE.get(target, target)
    if target in SCALING:
        args = tuple(abs(a) if isinstance(a, (int, float)) else a for a in args)
        kwargs = {k: abs(v) if isinstance(v, (int, float)) else v for k, v in kwargs.items()}
    return target, args, kwargs


def scatter_diagonal(base, src, offset: int = 0, dim1: int = 0, dim2: int = 1):
    """base with its diagonal (offset, dim1, dim2) replaced by src (aten.diagonal_scatter, the gradient of a weight's
    .diagonal()), as diag_embed and zero pads: exact (each entry is x − x + 0, x − 0 + 0 or 0 − 0 + s), and vmaps
    over an unbatched base without fixing the batch size."""
    dims = (dim1 % base.dim(), dim2 % base.dim())

    def embed(values):
        out = torch.diag_embed(values, offset, *dims)
        for d in sorted(dims):
            have, want = out.shape[d], base.shape[d]
            out = out.narrow(d, 0, want) if have > want else \
                torch.nn.functional.pad(out, [0, 0] * (out.dim() - 1 - d) + [0, want - have])
        return out
    return base - embed(base.diagonal(offset, *dims)) + embed(src)


# Ops vmap has no batching rule for (its fallback loops over the batch, fixing its size), by an equivalent.
BATCHABLE = {torch.ops.prims.convert_element_type.default: lambda x, dtype: x.to(dtype),
             aten.diagonal_scatter.default: scatter_diagonal}

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


def emit_clip_factors(graph: fx.Graph, spec: ClipSpec, by_param: dict[str, list[fx.Node]]) -> tuple[dict, fx.Node]:
    """One clip factor per sample for each clip group (0 in every group for a sample that kept() drops); returns
    (parameter name -> factor node, number of dropped samples node)."""
    groups = [(gi, names, bound, [n for name in names for n in by_param.get(name, [])])
              for gi, (names, bound) in enumerate(zip(spec.groups, spec.bounds))]
    groups = [g for g in groups if g[3]]
    sizes = [len(g[3]) for g in groups]

    parts = [part for g in groups for bound in g[3] for part in bound]  # each term's [s, e, a], flattened

    def group_norms(*values):  # the parts that are nodes; the floats (bounds.Bound) stay constants of the trace
        given = iter(values)
        bounds = as_bounds([next(given) if isinstance(part, fx.Node) else part for part in parts])
        out, start = [], 0
        for k in sizes:
            out.append(certified_group_norm(bounds[start:start + k]))
            start += k
        return torch.stack(out)
    norms = emit(graph, group_norms, [part for part in parts if isinstance(part, fx.Node)], "dp_certified_norms")
    bounds = [bound for _, _, bound, _ in groups]
    keep = emit(graph, lambda n: kept(n, bounds, spec), [norms], "dp_kept_samples")
    dropped = emit(graph, lambda k: (~k).sum(), [keep], "dp_dropped_samples")
    factors = {}
    for row, (gi, names, bound, _) in enumerate(groups):
        suffix = "" if len(spec.groups) == 1 else f"_group{gi}"
        factor = emit(graph, group_clip_factor(row, bounds, spec), [norms, keep], f"dp_clip_factor{suffix}")
        factors.update({name: factor for name in names})
    return factors, dropped


def group_clip_factor(row: int, bounds: Sequence[float], spec: ClipSpec) -> Callable:
    """(norms, keep) -> the clip factors of group `row` (a function of the two nodes, for tracing)."""
    return lambda norms, keep: clip_factor(norms, keep, row, bounds, spec)


def certified_group_norm(bounds: Sequence[Bound]) -> torch.Tensor:
    """[N_i, A_i] (2, B) over a group's k terms [s, e, a]: N_i = (√(Σ s) + Σ e)·F ≥ ‖g_i‖, and the clipped terms'
    release is within c_i·N_i + A_i, A_i = Σ a·F (Minkowski: ‖Σ_k (g_k + err_k)‖ ≤ ‖g‖ + Σ_k ‖err_k‖).
    F = cover(k + 3) covers the float64 roundings after the terms' bounds, on non-negative values: k − 1 additions in
    each sum (in any order), the square root, the addition of Σ e, F's own rounding and the multiplication by it:
    at most k + 3 relative roundings of u along any path. Each sum is a reduction over the terms stacked, so
    each term's [s, e, a] is written in the kernel of the reduction it comes from. (As a chain of additions, each
    link fused with the reduction of its term: on CUDA the Gram sums of every ghost layer of one shape became one
    kernel of some thirty float64 accumulators that took 0.79 ms of WRN-16-4's step, benchmarks/NOTES.md.) A part
    that is a float (the same for every sample) is added once, in Python's float64: the tensors' sum plus the
    floats' sum is k − 1 additions as well. (As a (B,) tensor each such part was a kernel of its own on CUDA, writing
    a constant into its slice of the stacked parts: 38 of the 233 kernel launches of WRN-16-4's DP backward,
    benchmarks/NOTES.md, forty-sixth session.)"""
    total = [sum_of_parts(parts) for parts in zip(*bounds)]
    norm, absolute = total[0].sqrt() + total[1], total[2]
    if not isinstance(absolute, torch.Tensor):
        absolute = torch.full_like(norm, absolute)
    return torch.stack([norm, absolute]) * cover(len(bounds) + 3)


def sum_of_parts(parts) -> torch.Tensor | float:
    """Σ of terms' parts (B,) float64 or floats: the tensors stacked and reduced, the floats summed in float64, the
    two added (a float if every part is one)."""
    tensors = [p for p in parts if isinstance(p, torch.Tensor)]
    floats = [p for p in parts if not isinstance(p, torch.Tensor)]
    total = torch.stack(tensors).sum(0) if tensors else None
    if floats:  # sum() starts from 0: its first addition is exact
        total = sum(floats) if total is None else total + sum(floats)
    return total


# How far below R the clip factor aims (clip_factor): its own float64 roundings take up to 5u of R, and the rest
# covers a relative shortfall of up to 2⁻⁴¹ in N_i and A_i as it reads them, from roundings in the bounds'
# arithmetic that their factors do not name (an error term's own product with its γ, the batch scale of a mean
# loss): about 2¹² roundings of u along a path, far more than any term's bound takes (its sums carry their own γ).
CLIP_SLACK = 2.0**-40


def clip_target(bound: float) -> float:
    """R·(1 − CLIP_SLACK): what C_i·N_i + A_i is held to (one rounding in Python, within clip_factor's 5u)."""
    return bound * (1 - CLIP_SLACK)


def kept(norms: torch.Tensor, bounds: Sequence[float], spec: ClipSpec) -> torch.Tensor:
    """(B,) whether a sample gets a nonzero clip factor: its bounds are finite and, in every group, what underflow
    may add to its release leaves room below the clip target (clip_factor)."""
    scale = norms.shape[-1] if spec.loss_reduction == "mean" else 1
    room = torch.stack([norms[row, 1] * scale < clip_target(bound) for row, bound in enumerate(bounds)]).all(0)
    return torch.isfinite(norms).flatten(0, 1).all(0) & room


def clip_factor(norms: torch.Tensor, keep: torch.Tensor, row: int, bounds: Sequence[float],
                spec: ClipSpec) -> torch.Tensor:
    """C_i = min(1, (R' − A_i)⁺/(N_i + 1e-6)) (Abadi) or (R' − A_i)⁺/(N_i + γ) (automatic) for group `row`: N_i the
    certified norm of the sample's own loss and A_i what underflow may add to its release whatever C_i is, so
    C_i·N_i + A_i ≤ R; 0 where keep (kept(), over every group) is False. norms: (groups, 2, B). Float64.
    R' = clip_target(R) leaves room for this function's own roundings: R' rounds up by ≤ u, R' − A_i by ≤ u,
    N_i + 1e-6 down by ≤ u and the quotient up by ≤ u, so C_i·N_i + A_i ≤ R'·(1 + u)²/(1 − u) + its rounding
    ≤ R(1 − 2⁻⁴⁰)(1 + 5u) < R (and C_i = 1 only where the quotient rounded to ≥ 1, the same bound). A quotient below
    2⁻¹⁰²² (a tiny R against a huge norm) rounds by up to η/2 absolutely, not by u: there it is taken one step down,
    below the exact quotient (a float64 sample of norm 2⁵⁰⁰ at R = 0.75·2⁻⁵⁷⁴ got C_i = η, released at 1.33·R)."""
    scale = norms.shape[-1] if spec.loss_reduction == "mean" else 1
    norm, absolute = norms[row, 0] * scale, norms[row, 1] * scale
    room = (clip_target(bounds[row]) - absolute).clamp(min=0.0)
    if spec.clipping == "automatic":
        factor = room / (norm + spec.clip_stability)
    else:
        factor = (room / (norm + 1e-6)).clamp(max=1.0)
    zero = torch.zeros_like(factor)
    factor = torch.where(factor < SMALLEST_NORMAL, torch.nextafter(factor, zero), factor)
    return torch.where(keep, factor, zero)


def clip_in_dtype(graph: fx.Graph, factor: fx.Node, dtype: torch.dtype, cache: dict, store: bool) -> fx.Node:
    """The (float64) clip factor rounded down to a term's dtype, once per factor and dtype. With store (graphs
    inductor lowers) it is pinned to one stored tensor: inductor would otherwise inline the factor's arithmetic into
    every kernel that scales by it, and two kernels may round one expression differently (stored)."""
    if (factor, dtype) not in cache:
        rounded = factor if dtype == factor.meta["val"].dtype else emit(
            graph, lambda c: round_down(c, dtype), [factor], f"{factor.name}_{str(dtype).removeprefix('torch.')}")
        cache[factor, dtype] = stored(graph, rounded) if store else rounded
    return cache[factor, dtype]


def emit_clipped_sum(graph, node, inputs, term, clip, param) -> fx.Node:
    """Σ_i C_i ĝ_i in the term's own layout. A float16 term's sum is formed in float32 (its factor given in float32)
    and saturated into float16's range (narrow_saturated): summed in float16 it overflowed to inf above 65504 before
    the noise, a release finite or not by the batch (66 samples clipped to R = 1000)."""
    rule, site = rule_for(node), planned_site(node)
    shape, dtype = node.meta["val"].shape, node.meta["val"].dtype
    name = f"dp_clipped_{safe_name(param.name)}"
    _, per_sample = term
    key = snippet_key(rule, site, shape)
    if per_sample is not None:
        return emit(graph, lambda c, g: narrow_saturated(weighted_sum(c, g), dtype).reshape(shape),
                    [clip, per_sample], name, key=("weighted_sum", tuple(map(str, shape))))

    def clipped(c, *t):
        if dtype in SATURATED:  # operands widened: exact, and no worse than the margins' float16 rounding model
            t = tuple(x.float() if isinstance(x, torch.Tensor) and x.dtype == dtype else x for x in t)
        return narrow_saturated(rule.clipped_sum(site, c, *t), dtype).reshape(shape)
    return emit(graph, clipped, [clip, *inputs], name, key=("clipped_sum", key))


# Dtypes whose range a batch's clipped sum can leave (float16: 65504; float32 and bfloat16 reach 3.4e38, which
# config.MAX_GRAD_NORM_CAP keeps out of reach): their clipped sums are formed wider and saturated into it.
SATURATED = (torch.float16,)


# Ops that only relabel or pick values (no new value can overflow): no saturation after them.
RELABELS = (ORDER_PRESERVING - CASTS) | PERMUTES | {aten.expand.default, aten.slice.Tensor, aten.select.int}


def narrow_saturated(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x (a clipped sum formed in float32 or the term's dtype) in dtype, values beyond dtype's range held at its
    largest finite value: elementwise 1-Lipschitz and never larger in magnitude, so a sample still moves the
    release by at most its clipped contribution (and its rounding), where an overflow to inf would not."""
    if dtype not in SATURATED:
        return x
    top = torch.finfo(dtype).max
    return x.clamp(-top, top).to(dtype)  # an overflow already to ±inf (an op in dtype) is held the same way


def weighted_sum(c: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Σ_i c_i g_i over the leading (batch) dim (g of any shape, read as it is laid out: a reshape would guard the
    batch where g's strides are a vmapped chain's, a shared parameter's combined gradients), c rounded down to g's
    dtype and dropped samples (c_i = 0) masked out (0·inf would be NaN): one reduction that inductor fuses with the
    masking and scaling (a matrix product would be one more kernel launch and a masked copy of g written and read).
    A SATURATED dtype's g is scaled and summed in float32, for narrow_saturated: in float16 a clip factor below 6e-8
    rounded down to 0, a sample then contributing nothing while not counted as dropped.
    The sum comes out laid out as a sample of g is stored (storage_order), and the release reads it and the noise in
    that order (emit_finish): the same values, but inductor, which fuses the release into this reduction, then walks
    one order for all of them. With the release in the parameter's order and g stored otherwise (the per-sample
    convolution kernel's (P, K, K, C)), the fused kernel read the noise out of order, its tiling scores found no
    coalesced access along the outputs, and it took the inner-reduction config: one output element a program, g
    read a sample at a time across programs, 0.62 ms a step for ResNet-50's six 256→256 layers where the sums
    alone take 0.09 ms (benchmarks/NOTES.md, fiftieth session)."""
    x = masked_scaled(g.float() if g.dtype in SATURATED else g, c)
    order = storage_order(g, first=1)
    if order is None:
        return x.sum(0)
    return x.permute(0, *order).sum(0).permute(*inverse(order))


def storage_order(t: torch.Tensor, first: int = 0) -> list[int] | None:
    """t's dims from `first` on, outermost first as they are stored (by stride; size-1 dims where they stand), or
    None where that is their own order or the strides do not say (a symbolic stride, or a zero one: broadcast)."""
    dims = list(range(first, t.dim()))
    if not all(isinstance(n, int) for n in t.shape[first:]):
        return None  # a symbolic size: asking whether it is 1 would guard it
    sized = [d for d in dims if t.shape[d] != 1]
    strides = [t.stride()[d] for d in sized]
    if not all(isinstance(s, int) and s > 0 for s in strides):
        return None
    stored = iter(sorted(sized, key=lambda d: -t.stride()[d]))  # stable: equal strides keep their order
    order = [next(stored) if d in sized else d for d in dims]
    return None if order == dims else order


def inverse(order: list[int]) -> list[int]:
    """The permutation that undoes t.permute(*order) (order of some dims, numbered from any start: only their ranks
    count, so it also undoes it once the dims before them are reduced away)."""
    return sorted(range(len(order)), key=lambda k: order[k])


def laid_like(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """flat (like.numel() values) as a tensor of like's shape, filled in like's storage order."""
    order = storage_order(like)
    if order is None:
        return flat.view(like.shape)
    return flat.view([like.shape[d] for d in order]).permute(*inverse(order))


def emit_finish(graph, spec: ClipSpec, clip: fx.Node, grads: list[fx.Node], dropped: fx.Node) -> list[fx.Node]:
    """grad = (scale·clipped + noise) / n for every parameter, with one noise draw for all (which also counts the
    dropped samples) split into a piece per parameter; one trace per gradient shape (a graph's parameters share
    a few shapes)."""
    from dpcompile.ops import gaussian_noise

    def finish(c, g, *noise):  # the batch size is c's length
        scale = c.shape[0] if spec.loss_reduction == "mean" else 1
        # scaled and noised in float64 (a bf16 or fp32 value times a batch size is exact there; in bf16 the product
        # rounded up by 2^-8 before the noise: a sample released 1.0012·R), rounded to the gradient's dtype after
        # the noise (float16's saturated sum included)
        work = torch.float32 if g.device.type == "mps" else torch.float64 if g.dtype != torch.float64 else g.dtype
        total = g.to(work) * scale + laid_like(noise[0], g).to(work) if noise else g.to(work) * scale
        # in g's storage order (weighted_sum), released contiguous as before: the noise is i.i.d., any order is one
        return (total / (spec.expected_batch_size or scale)).to(g.dtype).contiguous()

    def noise_pieces(d, *gs):  # sizes from the traced values: a gradient's shape may be symbolic
        numels = [g.numel() for g in gs]
        return tuple(gaussian_noise(gs[0], sum(numels), spec.noise_handle, d).split(numels))
    pieces = [()] * len(grads)
    if spec.noise_handle is not None:
        pieces = [(z,) for z in emit(graph, noise_pieces, [dropped, *grads], "dp_noise")]
    key = ("finish", spec.loss_reduction, spec.expected_batch_size)
    return [emit(graph, finish, [clip, g, *z], "dp_grad", key=key) for g, z in zip(grads, pieces)]


