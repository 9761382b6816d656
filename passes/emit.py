"""Build graph nodes from plain torch functions: trace on the operands' fake values, copy in, name."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch.fx as fx
from torch._guards import detect_fake_mode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_map


def trace_snippet(fn: Callable, args: Sequence[fx.Node]) -> fx.GraphModule:
    """ATen graph of fn(*args), traced on the fake values (symbolic shapes) the args carry, with
    inductor's decompositions (the same op set as the captured graphs)."""
    values = [a.meta["val"] for a in args]
    fake_mode = detect_fake_mode(values)
    assert fake_mode is not None, "emit needs nodes that carry fake values (meta['val'])"
    with fake_mode:
        return make_fx(fn, decomposition_table=decompositions())(*values)


@functools.cache
def decompositions() -> dict:
    """Inductor's decomposition table."""
    from torch._inductor.decomposition import select_decomp_table
    return select_decomp_table()


def emit(graph: fx.Graph, fn: Callable, args: Sequence[fx.Node], name: str):
    """Append fn(*args) to graph; the result node(s) are called name (name_0, name_1, … for tuples)."""
    snippet = trace_snippet(fn, args)
    env: dict[fx.Node, fx.Node] = dict(zip(snippet.graph.find_nodes(op="placeholder"), args))
    result = None
    for node in snippet.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            result = tree_map(lambda n: env[n] if isinstance(n, fx.Node) else n, node.args[0])
            break
        assert node.op == "call_function", f"snippet for {name} made a {node.op} node; keep tensor constants out"
        env[node] = graph.node_copy(node, lambda n: env[n])
        env[node]._rename(f"{name}_{node.name}")
    if isinstance(result, fx.Node):
        result._rename(name)
    elif isinstance(result, (tuple, list)):
        for i, r in enumerate(result):
            if isinstance(r, fx.Node) and r.op == "call_function" and not r.name.startswith(f"{name}_{i}"):
                r._rename(f"{name}_{i}")
    return result
