"""Build graph nodes from plain torch functions: trace on the operands' fake values, copy in, name."""
from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable, Sequence

import sympy
import torch
import torch.fx as fx
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map


def trace_snippet(fn: Callable, args: Sequence[fx.Node]) -> fx.GraphModule:
    """ATen graph of fn(*args), traced on the fake values (symbolic shapes) the args carry, with
    inductor's decompositions (the same op set as the captured graphs). The fake tensors' dispatch cache is off
    meanwhile: under a symbolic batch, rebuilding a cached output's sizes costs more than the meta function it
    saves (benchmarks/NOTES.md). Without the cache every op's checks run, so fn must not ask what only a batch of
    one answers differently (a flatten of an expanded tensor guards B != 1); tests/conftest.py fails any test
    whose DP passes add a guard that fixes or bounds the batch size."""
    values = [a.meta["val"] for a in args]
    fake_mode = detect_fake_mode(values)
    assert fake_mode is not None, "emit needs nodes that carry fake values (meta['val'])"
    seen: set[int] = set()
    for i, v in enumerate(values):  # one value object for two operands would trace as one input
        if isinstance(v, torch.Tensor) and (id(v) in seen or seen.add(id(v))):
            values[i] = fresh_value(v)
    cached, fake_mode.cache_enabled = fake_mode.cache_enabled, False
    try:
        with fake_mode:
            try:
                return record(fn, values)
            except NotRecorded:  # what only make_fx follows (a size the operands' sizes do not name)
                return make_fx(fn, decomposition_table=decompositions(), **make_fx_options())(*values)
    finally:
        fake_mode.cache_enabled = cached


class NotRecorded(Exception):
    """fn did something record() does not follow; make_fx traces it instead."""


def record(fn: Callable, values: Sequence) -> fx.GraphModule:
    """The ATen graph of fn(*values) as make_fx makes it (inductor's decompositions, the Python dispatcher, a
    CompositeImplicitAutograd op decomposed where autograd would have), from a dispatch mode that runs each op on the
    fake values and appends its node: without make_fx's proxies, pytree passes and metadata (tensor_meta, its
    snapshot of each value), which took about half the snippet traces' time (ResNet-50 (GN), benchmarks/NOTES.md,
    fifty-seventh session). A size argument becomes nodes from the operands' sizes (sym_size, then products and sums
    of those); one that is no product or sum of them, a tensor from outside fn's operands, an op that returns a
    symbolic value or gives back a tensor it was passed raise NotRecorded."""
    graph = fx.Graph()
    recorder = Recorder(graph, [(graph.placeholder(f"arg{i}_1"), v) for i, v in enumerate(values)])
    with enable_python_dispatcher(), recorder:
        out = fn(*values)
    graph.output(tree_map(recorder.arg, out))
    return fx.GraphModule(torch.nn.Module(), graph)


try:  # make_fx's test of whether autograd would have run an op's CompositeImplicitAutograd kernel
    from torch.utils._python_dispatch import autograd_would_have_decomposed
except ImportError:  # a torch without it: whether the op has such a kernel
    def autograd_would_have_decomposed(func, flat_args) -> bool:
        try:
            return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")
        except RuntimeError:  # an op the dispatcher does not know by name (prim::device)
            return False


SIZE_OPS = (torch.ops.aten.size.default, torch.ops.aten.stride.default, torch.ops.aten.storage_offset.default)
ALIAS_OPS = (torch.ops.aten.detach.default, torch.ops.aten.alias.default)  # record() maps them to their operand


def size_value(size):
    """A size as record() holds it (an int or a node) as its value: the int, or the node's SymInt."""
    return size.meta["val"] if isinstance(size, fx.Node) else size


class Recorder(TorchDispatchMode):
    """record()'s dispatch mode: one node per op that reaches it; each traced tensor (by identity, kept alive) and
    each size expression to its node."""

    def __init__(self, graph: fx.Graph, inputs: Sequence[tuple[fx.Node, object]]):
        super().__init__()
        self.graph, self.table = graph, decompositions()
        self.nodes: dict[int, fx.Node] = {}
        self.kept: list[torch.Tensor] = []
        self.sizes: dict[sympy.Expr, fx.Node] = {}
        self.size_of: dict[sympy.Symbol, tuple[fx.Node, int, torch.SymInt]] = {}
        for node, value in inputs:
            node.meta["val"] = value
            if isinstance(value, torch.Tensor):
                self.track(value, node)
                for dim, size in enumerate(value.shape):
                    if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
                        self.size_of.setdefault(size.node.expr, (node, dim, size))
            elif isinstance(value, torch.SymInt):  # an operand that is a size: its expression is that node
                self.sizes.setdefault(value.node.expr, node)

    def track(self, value: torch.Tensor, node: fx.Node) -> None:
        if id(value) in self.nodes:
            raise NotRecorded("an op gave back a tensor it was passed")
        self.nodes[id(value)] = node
        self.kept.append(value)

    def arg(self, a):
        """An op's argument as the graph holds it: a node for a traced tensor or a symbolic size."""
        if isinstance(a, torch.Tensor):
            if id(a) not in self.nodes:
                raise NotRecorded("a tensor from outside the operands")
            return self.nodes[id(a)]
        if isinstance(a, torch.SymInt):
            constant = a.node.maybe_as_int()
            return constant if constant is not None else self.size(a.node.expr)
        if isinstance(a, (torch.SymFloat, torch.SymBool)):
            raise NotRecorded("a symbolic float or bool")
        return a

    def size(self, expr: sympy.Expr):
        """The node (or int) computing a size expression from the operands' sizes: sym_size of an operand's dimension
        for a symbol, products and sums of those."""
        if isinstance(expr, sympy.Integer):
            return int(expr)
        if expr not in self.sizes:
            if isinstance(expr, sympy.Symbol) and expr in self.size_of:
                operand, dim, value = self.size_of[expr]
                node = self.graph.call_function(torch.ops.aten.sym_size.int, (operand, dim))
                node.meta["val"] = value
            elif isinstance(expr, (sympy.Mul, sympy.Add)):
                op = operator.mul if isinstance(expr, sympy.Mul) else operator.add
                node, *rest = map(self.size, expr.args)
                for other in rest:
                    value = op(size_value(node), size_value(other))
                    node = self.graph.call_function(op, (node, other))
                    node.meta["val"] = value
            else:
                raise NotRecorded(f"the size {expr}")
            self.sizes[expr] = node
        return self.sizes[expr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:  # a tensor's device (as make_fx: no node)
            return func(*args, **kwargs)
        if func in ALIAS_OPS:  # snippets mutate nothing: an alias is its operand's node (emit drops them too)
            out = func(*args, **kwargs)
            self.track(out, self.arg(args[0]))
            return out
        if func in self.table:
            with self:
                out = self.table[func](*args, **kwargs)
            if out is not NotImplemented:
                return out
        if func not in SIZE_OPS and autograd_would_have_decomposed(func, tree_flatten((args, kwargs))[0]):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if func._schema.is_mutable:  # snippets are functional; make_fx records what mutation does
            raise NotRecorded(f"{func} mutates an operand")
        out = func(*args, **kwargs)
        leaves = tree_leaves(out)
        if not any(isinstance(v, torch.Tensor) for v in leaves):  # prim.device, a dtype: nothing to record
            if any(isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)) for v in leaves):
                raise NotRecorded(f"{func} returned a symbolic value")
            return out
        node = self.graph.create_node("call_function", func, tree_map(self.arg, tuple(args)),
                                      tree_map(self.arg, kwargs), name=func.overloadpacket.__name__)
        node.meta["val"] = out
        if isinstance(out, torch.Tensor):
            self.track(out, node)
        elif isinstance(out, (tuple, list)) and all(isinstance(v, torch.Tensor) or v is None for v in out):
            for i, v in enumerate(out):
                if v is not None:
                    item = self.graph.call_function(operator.getitem, (node, i))
                    item.meta["val"] = v
                    self.track(v, item)
        else:
            raise NotRecorded(f"{func} returned {type(out).__name__}")
        return out


@functools.cache
def make_fx_options() -> dict:
    """make_fx without its torch-function metadata mode where this torch can turn it off: that mode only records
    each node's `torch_fn` (read by torch.export, not by inductor or the passes) and took about 8% of the snippet
    traces' time on ResNet-50 (benchmarks/NOTES.md, thirty-fifth session)."""
    option = "_disable_torch_fn_metadata_mode"
    return {option: True} if option in inspect.signature(make_fx).parameters else {}


@functools.cache
def decompositions() -> dict:
    """Inductor's decomposition table."""
    from torch._inductor.decomposition import select_decomp_table
    return select_decomp_table()


def graph_module(root: fx.GraphModule, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    """A GraphModule of graph whose Python code is generated where it is first needed (a call, .code, a pickle),
    not here (as make_fx's are). The rewritten backward's code took 0.6 s on ResNet-50 (11,800 nodes, this project's
    CPU), and inductor never runs it: its post-grad passes and its cache key (a pickle of the module) generated the
    code again. Made lazily, ResNet-50's first step under inductor spent 1.4 s generating it instead of 2.2 s
    (benchmarks/NOTES.md, fifty-third session)."""
    try:  # torch.fx's own (2.3 on), private: where a torch lacks it, the code is generated here
        from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module
    except ImportError:
        return fx.GraphModule(root, graph, class_name=class_name)
    with _use_lazy_graph_module(True):
        return _make_graph_module(root, graph, class_name=class_name)


def signature(args: Sequence[fx.Node]) -> tuple:
    """The operands' metadata a trace depends on: shape (symbolic), stride, dtype, device of each value."""
    def one(v):
        if isinstance(v, torch.Tensor):
            return tuple(map(str, v.shape)), tuple(map(str, v.stride())), v.dtype, v.device
        return type(v).__name__, str(v)
    return tuple(one(a.meta["val"]) for a in args)


def cached_snippet(graph: fx.Graph, fn: Callable, args: Sequence[fx.Node], key) -> tuple[fx.GraphModule, bool]:
    """(trace_snippet's graph, whether it was traced before): traced once per (key, operand signature) in a
    graph being built; fn must depend on nothing but its operands and what key names."""
    if key is None:
        return trace_snippet(fn, args), False
    cache = graph.__dict__.setdefault("_dp_snippets", {})
    full = (key, signature(args))
    reused = full in cache
    if not reused:
        cache[full] = trace_snippet(fn, args)
    return cache[full], reused


def fresh_value(value):
    """A new fake tensor like value (same fake mode, symbolic shape, stride): no two nodes share one (a
    trace over both would take them for one input)."""
    if not isinstance(value, torch.Tensor):
        return value
    with detect_fake_mode([value]):
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)


def with_provenance(node: fx.Node) -> fx.Node:
    """node marked as the backward node it is, with its op as its own origin: inductor then lists it by name in the
    source comment above each kernel that computes it and names the kernel after its op, so a profile's kernels say
    which stage and parameter they compute (the emitted names: dp_norm_sq_<param>_..., dp_clipped_<param>_...)."""
    node.meta.setdefault("partitioner_tag", "is_backward")
    if isinstance(node.target, torch._ops.OpOverload):
        node.meta.setdefault("original_aten", node.target)
    return node


aten = torch.ops.aten
SAME_VALUE_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.alias.default)


def is_noop(node: fx.Node) -> bool:
    """Whether node's result is its operand as it stands: a view or alias of the same sizes and strides, or an
    identity permute (generic rule code makes them: a reshape to the shape a tensor has, a movedim of dim 0 to 0).
    Sizes are compared as expressions, which asks the shape environment nothing. A size that only such an op read is
    left unused, for the rewrite's dead-code elimination."""
    if node.target is aten.permute.default:
        return list(node.args[1]) == list(range(len(node.args[1])))
    if node.target not in SAME_VALUE_VIEWS or not isinstance(node.args[0], fx.Node):
        return False
    before, after = node.args[0].meta.get("val"), node.meta.get("val")
    if not (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)):
        return False
    return (before.dtype == after.dtype and list(map(str, before.shape)) == list(map(str, after.shape))
            and list(map(str, before.stride())) == list(map(str, after.stride()))
            and str(before.storage_offset()) == str(after.storage_offset()))


def emit(graph: fx.Graph, fn: Callable, args: Sequence[fx.Node], name: str, key=None):
    """Append fn(*args) to graph; the result node(s) are called name (name_0, name_1, … for tuples).
    With a key, fn's trace is shared by the emits of one graph with the same key and operand metadata."""
    snippet, reused = cached_snippet(graph, fn, args, key)
    env: dict[fx.Node, fx.Node] = dict(zip(snippet.graph.find_nodes(op="placeholder"), args))
    result = None
    for node in snippet.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            result = tree_map(lambda n: env[n] if isinstance(n, fx.Node) else n, node.args[0])
            break
        assert node.op == "call_function", f"snippet for {name} made a {node.op} node; keep tensor constants out"
        if is_noop(node) and not any(user.op == "output" for user in node.users):
            env[node] = env[node.args[0]]  # its operand itself; a result stays a node of its own
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
        env[node]._rename(f"{name}_{node.name}")
        with_provenance(env[node])
    if reused:  # the results' values are the first emit's: give them their own (see fresh_value)
        for r in tree_leaves(result):
            if isinstance(r, fx.Node) and "val" in r.meta:
                r.meta["val"] = fresh_value(r.meta["val"])
    if isinstance(result, fx.Node):
        result._rename(name)
    elif isinstance(result, (tuple, list)):
        for i, r in enumerate(result):
            if isinstance(r, fx.Node) and r.op == "call_function" and not r.name.startswith(f"{name}_{i}"):
                r._rename(f"{name}_{i}")
    return result
