"""Plan pass: per parameter-gradient term, each method's cost as sympy expressions, and the choice.

Policies: "auto" (the default) compares estimated time (FLOPs at the arithmetic rate plus bytes written and
read at the memory rate), breaks near-ties by memory, and holds at most a share of the saved tensors
(DPConfig.auto_extra_memory) more than "mixed" would; "mixed" is the paper's rule (ghost iff 2T² < p·d; Bu, Mao &
Xu, NeurIPS 2022); "ghost" / "per_sample" force one. Decisions use the shape environment's hints and add no
guards: they change speed and memory, never the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
import torch.fx as fx
from torch._guards import detect_fake_mode

from . import tied
from .meta import PARAMS, PLAN, SITE, PassContext, Site, symbol_hints
from .rules import WORD, Cost, rule_for

FLOPS_PER_SECOND = 50e12  # fp32 matrix work, H100 class
BYTES_PER_SECOND = 3e12
NEAR_TIE = 0.1


@dataclass(frozen=True)
class Decision:
    """The method for one site, the costs it weighed (expressions and numbers now) and why."""

    method: str
    costs: dict[str, Cost]
    numbers: dict[str, tuple[float, float]]
    reason: str
    impl: str = ""  # the rule's implementation of the method (Site.impl)
    flip: bool | None = None  # a tied use under ghost clipping: whether its term reaches the gradient transposed
    tf32: bool = False  # the term's products on TF32 tensor cores (tf32_products)


def shape_hints(gm: fx.GraphModule) -> dict:
    """The shape environment's current values of the size symbols."""
    vals = [n.meta.get("val") for n in gm.graph.nodes if "val" in n.meta]
    mode = detect_fake_mode(vals)
    env = getattr(mode, "shape_env", None)
    if env is None:
        return {}
    return dict(symbol_hints(env))


def evaluate(expr, hints: dict) -> float:
    """A size expression's value on the hints, without touching the shape environment."""
    return float(sympy.sympify(expr).xreplace(hints))


def estimated_seconds(cost: Cost, hints: dict) -> float:
    """FLOPs at the arithmetic rate plus the bytes moved at the memory rate."""
    return evaluate(cost.flops, hints) / FLOPS_PER_SECOND + evaluate(cost.moved, hints) / BYTES_PER_SECOND


def choose(policy: str, site: Site, costs: dict[str, Cost], hints: dict) -> tuple[str, str]:
    """(method, reason) for one site under a policy."""
    if len(costs) == 1:
        return next(iter(costs)), "the only method for this op"
    if policy in costs:
        return policy, f"policy '{policy}'"
    s = site.shape
    if policy == "mixed":
        lhs, rhs = evaluate(2 * s.T**2, hints), evaluate(s.p * s.d, hints)
        return ("ghost", f"2T²={lhs:g} < p·d={rhs:g}") if lhs < rhs else ("per_sample", f"2T²={lhs:g} ≥ p·d={rhs:g}")
    seconds = {m: estimated_seconds(c, hints) for m, c in costs.items()}
    best = min(seconds, key=seconds.get)
    other = next(m for m in costs if m != best)
    if seconds[other] <= seconds[best] * (1 + NEAR_TIE) and evaluate(costs[other].bytes, hints) < evaluate(costs[best].bytes, hints):
        best, other = other, best
        return best, f"near tie on time ({seconds[best]*1e3:.3g} vs {seconds[other]*1e3:.3g} ms est.), less memory"
    return best, f"est. {seconds[best]*1e3:.3g} ms vs {seconds[other]*1e3:.3g} ms for {other}"


def plan_sites(gm: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """Write dp_plan (a Decision) next to every dp_site."""
    hints, policy = shape_hints(gm), ctx.policy
    for param in gm.meta[PARAMS]:
        chosen = {}
        for node in param.sites:
            site = node.meta[SITE]
            costs = rule_for(node).cost(site)
            chosen[node] = (costs, *choose(policy, site, costs, hints))
        chain = tied.orientations(gm, param) if param.shared else None
        ghost_tied = chain is not None and tied_ghost_pays(policy, param, chosen, hints)
        for i, (node, (costs, method, reason)) in enumerate(chosen.items()):
            if ghost_tied:
                method, reason = "ghost", (f"tied parameter used {len(param.sites)} times: ghost norms of the "
                                           "uses and their cross terms")
            elif param.shared:
                method, reason = "per_sample", (f"shared parameter used {len(param.sites)} times: uses summed per sample"
                                                if len(param.sites) > 1 else "gradient scaled or rounded after the batch sum")
            numbers = {m: (evaluate(c.flops, hints), evaluate(c.bytes, hints)) for m, c in costs.items()}
            node.meta[PLAN] = decide(node, method, costs, numbers, reason, param.shared, ctx,
                                       chain.flips[i] if ghost_tied else None)
    if policy == "auto":
        cap_memory(gm, hints, [node for param in gm.meta[PARAMS] if not param.shared for node in param.sites], ctx)
    return gm


def decide(node: fx.Node, method: str, costs: dict[str, Cost], numbers: dict, reason: str, shared: bool,
           ctx: PassContext, flip: bool | None = None) -> Decision:
    """A term's Decision for a method: what follows from the method (how the rule forms the per-sample gradients, its
    optional `implementation`; whether the products run on TF32) is derived here, wherever the method is chosen or
    changed."""
    site, implementation = node.meta[SITE], getattr(rule_for(node), "implementation", None)
    tf32 = tf32_products(node, method, shared, ctx)
    return Decision(method, costs, numbers, reason, implementation(site, method, tf32) if implementation else "", flip,
                    tf32)


def cap_memory(gm: fx.GraphModule, hints: dict, nodes: list[fx.Node], ctx: PassContext) -> None:
    """Keep auto's extra memory over mixed's plan within ctx.auto_extra_memory of the saved tensors: of the sites
    (unshared parameters' terms) where auto instantiates per sample and mixed would not, those that save the
    least time per byte go back to ghost until the rest fit."""
    extra = []  # (seconds saved per byte, bytes more than ghost, node)
    for node in nodes:
        decision = node.meta[PLAN]
        if decision.method != "per_sample" or "ghost" not in decision.costs or \
                choose("mixed", node.meta[SITE], decision.costs, hints)[0] != "ghost":
            continue
        more = decision.numbers["per_sample"][1] - decision.numbers["ghost"][1]
        if more > 0:
            ghost, per_sample = (estimated_seconds(decision.costs[m], hints) for m in ("ghost", "per_sample"))
            saved = ghost - per_sample
            extra.append((saved / more, more, node))
    share = ctx.auto_extra_memory
    budget = share * saved_tensor_bytes(gm, hints)
    total = sum(more for _, more, _ in extra)
    for _, more, node in sorted(extra, key=lambda e: e[0]):
        if total <= budget:
            break
        d = node.meta[PLAN]
        node.meta[PLAN] = decide(node, "ghost", d.costs, d.numbers,
                                 f"auto's per-sample gradients would hold {total / 2**20:.4g} MiB more than "
                                 f"mixed's plan, over {share * 100:.3g}% of the saved tensors "
                                 f"({budget / 2**20:.4g} MiB)", False, ctx)
        total -= more


def saved_tensor_bytes(gm: fx.GraphModule, hints: dict) -> float:
    """Size of the backward graph's tensor inputs (saved activations, parameters, output gradients) at the hints, in
    the costs' unit (WORD bytes an element, as Cost.bytes counts them)."""
    total = 0.0
    for node in gm.graph.find_nodes(op="placeholder"):
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            numel = value.numel()
            total += evaluate(numel.node.expr, hints) if isinstance(numel, torch.SymInt) else numel
    return total * WORD


def tied_ghost_pays(policy: str, param, chosen: dict, hints: dict) -> bool:
    """Ghost clipping for all uses of a tied parameter (with cross terms) rather than summed per-sample
    gradients: forced by the policy, every use's own choice under "mixed", the lower estimate under "auto"."""
    if any("ghost" not in costs for costs, _, _ in chosen.values()):
        return False
    if policy in ("ghost", "per_sample"):
        return policy == "ghost"
    if policy == "mixed":
        return all(method == "ghost" for _, method, _ in chosen.values())
    ghost = sum(estimated_seconds(c["ghost"], hints) for c, _, _ in chosen.values())
    per_sample = sum(estimated_seconds(c["per_sample"], hints) for c, _, _ in chosen.values())
    return ghost + estimated_seconds(tied.cross_cost(list(param.sites)), hints) < per_sample


def tf32_products(node: fx.Node, method: str, shared: bool, ctx: PassContext) -> bool:
    """Whether a term's products run on TF32 tensor cores: a site that its rule names a product of a kind
    (`products`: matmul, convolution) that the context puts on TF32, from fp32 operands (half-precision ones already
    multiply on tensor cores), not of a shared parameter (whose uses are bounded against their exact sum), and
    either its per-sample gradients (ctx.tf32: instantiated, summed over T > 1 positions, as an outer product stays
    pointwise; clipped by their own norm) or a ghost term's clipped sum and Grams (ctx.ghost_tf32: their truncation
    added to the term's certified margin)."""
    site = node.meta[SITE]
    kind = getattr(rule_for(node), "products", {}).get(site.rule)
    operands = [n.meta["val"] for n in site.inputs[:2]]
    if shared or kind is None or not all(v.dtype == torch.float32 for v in operands):
        return False
    if method == "per_sample":
        return kind in ctx.tf32 and site.shape.T != 1
    return method == "ghost" and kind in ctx.ghost_tf32
