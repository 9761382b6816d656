"""What code compiled with a DP backend can train: the modules and parameters its graph may read.

The release guards of the backend form (`torch.compile(model, backend=dpcompile.backend(...))`) track the
parameters a backend captures, from its first capture. Before it, and for parameters it never captured (the
compiled module inlined into another torch.compile, which compiles it with the outer backend), the optimizer step
asks this module which parameters belong to something compiled with a DP backend:
- `compiled_with`: one scan of the garbage collector's objects for the modules and functions torch.compile compiled
  with a given backend (directly, or through a user's function or partial that calls it);
- `wrapping_model`: the callable a torch.compile call is wrapping, read from its frame when it reads the backend's
  name, before Dynamo holds anything compiled (what a compile of the compiled module unwraps);
- `reached`: the modules and loose parameters such callables reach: registered submodules, and, a few steps away,
  what they hold outside them (plain attributes, containers, callables: closures, partials, bound methods, the
  globals their code loads, the class's own methods).
Objects are told apart by their type alone (an attribute read on a user's object may run anything); an object of
another kind (an instance of a plain class) is not looked into.
"""
from __future__ import annotations

import dis
import functools
import gc
import sys
import types
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

CONTAINERS = (list, tuple, set, frozenset)


def cell_values(fn: Any) -> list:
    """What a function's closure holds (its empty cells left out)."""
    values = []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # empty
            pass
    return values


@functools.lru_cache(maxsize=4096)
def global_names(code: types.CodeType) -> tuple[str, ...]:
    """The names a code object (and the code nested in it) loads as globals: not the attribute names it reads."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(global_names(const))
    return tuple(sorted(names))


@functools.lru_cache(maxsize=1024)
def own_functions(cls: type) -> tuple:
    """The functions a module class and its bases define outside torch (forward, the helpers it calls; of the
    special methods, __call__ alone: __init__ and __repr__ do not run in a compiled forward)."""
    found = []
    for klass in cls.__mro__:
        if (getattr(klass, "__module__", "") or "").startswith("torch.") or klass is object:
            continue
        for name, value in vars(klass).items():
            if name.startswith("__") and name.endswith("__") and name != "__call__":
                continue
            value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if type(value) is types.FunctionType:
                found.append(value)
    return tuple(found)


@functools.lru_cache(maxsize=None)
def category(kind: type) -> type | str | None:
    """How compiled code could reach a module or parameter through a value of this type (by the type alone): "module",
    "parameter", "callable" (a function, bound method or partial), the built-in container type it derives from
    (whose own methods are read, never a subclass's), or None."""
    if kind is types.FunctionType or kind is types.MethodType or issubclass(kind, functools.partial):
        return "callable"
    if issubclass(kind, torch.nn.Module):
        return "module"
    if issubclass(kind, torch.nn.Parameter):
        return "parameter"
    return next((base for base in (*CONTAINERS, dict) if issubclass(kind, base)), None)


def might_hold(value: Any) -> bool:
    """Whether compiled code could reach a module or parameter through value: any of category's but empty containers."""
    kind = category(type(value))
    return kind is not None and (type(kind) is str or kind.__len__(value) > 0)


def children(obj: Any) -> list:
    """What obj holds that compiled code starting at it may read, one step away (by obj's type alone)."""
    kind = category(type(obj))
    if kind is dict:
        return list(dict.values(obj))
    if kind in CONTAINERS:
        return list(kind.__iter__(obj))
    if issubclass(type(obj), functools.partial):
        return [obj.func, *obj.args, *obj.keywords.values()]
    if type(obj) is types.MethodType:
        return [obj.__self__, obj.__func__]
    if type(obj) is types.FunctionType:
        space = obj.__globals__
        held = [*cell_values(obj), *(space[n] for n in global_names(obj.__code__) if n in space)]
        wrapped = obj.__dict__.get("__wrapped__")
        return held + ([wrapped] if wrapped is not None else [])
    return []


def reached(roots: Iterable[Any], depth: int = 5) -> tuple[list[tuple[str, torch.nn.Module]], list[torch.Tensor]]:
    """((name, module) pairs, loose parameters) that code compiled from `roots` may read: each module reached with its
    registered submodules (named by the module's class and their paths in it), and what is reached from them in at
    most `depth` steps (children; a module's non-registered attributes and its class's functions one step away),
    breadth first, each object once."""
    modules: dict[int, tuple[str, torch.nn.Module]] = {}
    params: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    queue = deque((root, depth) for root in roots)
    while queue:
        obj, left = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        try:  # a user's container or function may raise anything
            kind = category(type(obj))
            if kind == "module":
                nxt = []
                for path, m in obj.named_modules(prefix=type(obj).__name__):
                    seen.add(id(m))
                    modules[id(m)] = path, m
                    nxt += [v for k, v in vars(m).items() if k not in ("_modules", "_parameters", "_buffers")
                            and might_hold(v)]
                    nxt += own_functions(type(m))
            elif kind == "parameter":
                params[id(obj)] = obj
                continue
            else:
                nxt = children(obj)
            if left:
                queue.extend((v, left - 1) for v in nxt if id(v) not in seen and might_hold(v))
        except Exception:
            continue
    for _, m in modules.values():
        for p in m._parameters.values():
            params.pop(id(p), None)
    return list(modules.values()), list(params.values())


def compiled_with(backends: list) -> dict[int, list[tuple[Any, Any]]]:
    """id(backend) -> (compiled, root) for each live module and function that torch.compile compiled with one of
    `backends` (torch.compile(module), module.compile(), torch.compile(function); the backend given as is, or inside
    a function or partial that calls it): root is what its graphs start from (the module, or the function compiled),
    for `reached`. One scan of the garbage collector's objects (about 0.1 s)."""
    from torch._dynamo.eval_frame import OptimizedModule, innermost_backend
    wanted = {id(b) for b in backends}

    def backend_of(value) -> int | None:
        try:  # value may be a user's object (a compiled callable in a closure), whose attributes may raise anything
            callback = getattr(value, "callback", value)
            inner = innermost_backend(callback) if callable(callback) else None
            compiler = getattr(inner, "compiler_fn", None)  # torch.compile wraps it (_TorchCompileWrapper)
            candidates = [inner, compiler, *children(compiler)]  # a user's function or partial calling the backend
        except Exception:
            return None
        return next((id(c) for c in candidates if id(c) in wanted), None)

    modules, functions = [], []
    for obj in gc.get_objects():  # by type alone: an attribute read may run code (deprecated or lazy attributes)
        kind = type(obj)
        if issubclass(kind, OptimizedModule):
            if (owner := backend_of(obj.dynamo_ctx)) is not None:
                modules.append((owner, obj))
        elif kind is types.FunctionType and "_torchdynamo_orig_callable" in obj.__dict__:
            owner = next((o for c in cell_values(obj) if (o := backend_of(c)) is not None), None)
            if owner is not None:
                functions.append((owner, obj))
    found: dict[int, list] = {}
    for owner, m in modules:
        found.setdefault(owner, []).append((m, m))
    forwards = {id(m.__dict__.get(name)) for _, m in modules for name in ("forward", "_forward")}
    for owner, fn in functions:
        if id(fn) not in forwards:  # an OptimizedModule's own forward is counted with it
            found.setdefault(owner, []).append((fn, fn.__dict__["_torchdynamo_orig_callable"]))
    return found


def wrapping_model() -> Any:
    """The callable that torch.compile(model, backend=...) is wrapping, read from torch.compile's frame a few calls
    up (a backend's name is read there, by torch._TorchCompileWrapper, before Dynamo holds anything compiled with
    it); None where it is not found (torch._dynamo.optimize, or a torch that reads the name elsewhere). The frame is
    torch's own `compile` (by its file, so a wrapper installed as torch.compile does not hide it)."""
    source = torch.__file__
    frame = sys._getframe(1)
    for _ in range(10):
        frame = frame.f_back
        if frame is None:
            return None
        if frame.f_code.co_name == "compile" and frame.f_code.co_filename == source:
            return frame.f_locals.get("model")
    return None
