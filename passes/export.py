"""Graph export: an FX graph as a networkx DiGraph (nodes by name, with op, target and meta)."""
from __future__ import annotations

import networkx as nx
import torch.fx as fx


def to_networkx(gm: fx.GraphModule | fx.Graph) -> nx.DiGraph:
    """Nodes are node names with attributes op, target, shape; edges run from input to user."""
    graph = gm.graph if isinstance(gm, fx.GraphModule) else gm
    g = nx.DiGraph()
    for node in graph.nodes:
        val = node.meta.get("val")
        g.add_node(node.name, op=node.op, target=str(node.target),
                   shape=tuple(str(s) for s in getattr(val, "shape", ())), node=node)
        for src in node.all_input_nodes:
            g.add_edge(src.name, node.name)
    return g
