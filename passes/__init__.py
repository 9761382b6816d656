"""dpcompile's graph passes, in pipeline order. Each is a function (GraphModule, PassContext) ->
GraphModule; analyses annotate node.meta (keys in meta.py), the rewrite builds a new graph."""
from __future__ import annotations

import torch.fx as fx

from .composites import expand_composites
from .export import to_networkx
from .meta import LayerShape, ParamGrad, ParamSpec, PassContext, Site
from .plan import Decision, plan_sites
from .rewrite import ClipSpec, rewrite_backward
from .rules import RULES, Cost
from .safety import check_sample_independence
from .shapes import annotate_sites

PIPELINE = (expand_composites, annotate_sites, plan_sites, rewrite_backward)


def run_pipeline(backward: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """The backward graph after every pass."""
    for dp_pass in PIPELINE:
        backward = dp_pass(backward, ctx)
    return backward


__all__ = ["PIPELINE", "check_sample_independence", "run_pipeline", "annotate_sites", "plan_sites", "rewrite_backward", "ClipSpec",
           "PassContext", "ParamSpec", "ParamGrad", "Site", "LayerShape", "Decision", "Cost", "RULES",
           "to_networkx"]
