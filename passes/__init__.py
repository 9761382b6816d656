"""dpcompile's graph passes, in pipeline order. Each is a function (GraphModule, PassContext) ->
GraphModule; analyses annotate node.meta (keys in meta.py), the rewrite builds a new graph."""
from __future__ import annotations

import logging
import time

import torch.fx as fx

from dpcompile.errors import DPCompileError

from .composites import expand_composites
from .export import to_networkx
from .meta import LayerShape, ParamGrad, ParamSpec, PassContext, Site
from .plan import Decision, plan_sites
from .rewrite import ClipSpec, rewrite_backward
from .rules import RULES, Cost
from .safety import check_hand_written_backward, check_sample_independence, refuse_batch_broadcasts
from .shapes import annotate_sites

PIPELINE = (refuse_batch_broadcasts, expand_composites, annotate_sites, check_hand_written_backward, plan_sites,
            rewrite_backward)
log = logging.getLogger("dpcompile.passes")


def run_pipeline(backward: fx.GraphModule, ctx: PassContext) -> fx.GraphModule:
    """The backward graph after every pass, each timed in the log (logger dpcompile.passes, debug) and its graph
    checked (fx's lint: every argument defined before its use, one output). A pass that fails on something other
    than a refusal (DPCompileError, which already says what to do) raises its own exception with a note naming the
    pass, the graph and what to report."""
    for dp_pass in PIPELINE:
        start = time.perf_counter()
        try:
            backward = dp_pass(backward, ctx)
            backward.graph.lint()
        except DPCompileError:
            raise
        except Exception as exc:
            exc.add_note(f"dpcompile: the {dp_pass.__name__} pass failed on a backward graph of "
                         f"{len(backward.graph.nodes)} nodes. This is a dpcompile bug, not a refusal: please report "
                         "it with the model's definition (dp_model.graphs holds the graphs captured so far).")
            raise
        log.debug("%s: %.3f s, %d nodes", dp_pass.__name__, time.perf_counter() - start, len(backward.graph.nodes))
    return backward


__all__ = ["PIPELINE", "check_sample_independence", "run_pipeline", "annotate_sites", "plan_sites", "rewrite_backward", "ClipSpec",
           "PassContext", "ParamSpec", "ParamGrad", "Site", "LayerShape", "Decision", "Cost", "RULES",
           "to_networkx"]
