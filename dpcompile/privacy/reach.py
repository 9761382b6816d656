"""What code compiled with a DP backend can train: the modules and parameters its graph may read.

The release guards of the backend form (`torch.compile(model, backend=dpcompile.backend(...))`) track the
parameters a backend captures, from its first capture. Before it, and for parameters it never captured (the
compiled module inlined into another torch.compile, which compiles it with the outer backend), the optimizer step
asks this module which parameters belong to something compiled with a DP backend:
- `compiled_with`: one scan of the garbage collector's objects for the modules and functions torch.compile compiled
  with a given backend (directly, or through a user's function or partial that calls it);
- `wrapping_model`: the callable a torch.compile call is wrapping, read from its frame when it reads the backend's
  name, before Dynamo holds anything compiled (what a compile of the compiled module unwraps);
- `reached`: the modules and trainable tensors such callables reach: registered submodules, and, a few steps away,
  what they hold outside them (plain attributes and buffers, built-in containers, callables: closures, defaults,
  partials, bound methods, the globals their code loads, the class's members).
Objects are told apart by their type alone (an attribute read on a user's object may run anything); an object of
another kind (an instance of a plain class, a dataclass) is not looked into.
"""
from __future__ import annotations

import dis
import functools
import gc
import sys
import types
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch

CONTAINERS = (list, tuple, set, frozenset, deque)
SPECIAL_CALLED = ("__call__", "__getattr__", "__getattribute__")  # the special methods a compiled forward runs


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
def loaded_names(code: types.CodeType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(globals, attributes): the names a code object (and the code nested in it) loads as globals, and those it
    reads as attributes (of a Python module among those globals: `config.MODEL`)."""
    found: tuple[set, set] = (set(), set())
    for i in dis.get_instructions(code):
        if i.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            found[0].add(i.argval)
        elif i.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            found[1].add(i.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            for names, more in zip(found, loaded_names(const)):
                names.update(more)
    return tuple(sorted(found[0])), tuple(sorted(found[1]))


def _category(kind: type) -> type | str | None:
    if kind is types.FunctionType or kind is types.MethodType or issubclass(kind, functools.partial) \
            or kind is LRU_WRAPPER:
        return "callable"
    if issubclass(kind, torch.nn.Module):
        return "module"
    if issubclass(kind, torch.Tensor):
        return "tensor"
    if kind is types.ModuleType:
        return "python module"
    if issubclass(kind, weakref.ref):
        return "callable"
    return next((base for base in (*CONTAINERS, dict) if issubclass(kind, base)), None)


LRU_WRAPPER = type(functools.lru_cache()(lambda: None))
_category_cached = functools.lru_cache(maxsize=None)(_category)


def category(value: Any) -> type | str | None:
    """How compiled code could reach a module or trainable tensor through value, by its type alone: "module",
    "tensor", "callable" (a function, bound method, partial, lru_cache wrapper or weak reference), "python module",
    the built-in
    container type it derives from (whose own methods are read, never a subclass's), or None."""
    kind = type(value)
    try:
        return _category_cached(kind)
    except TypeError:  # a type that cannot be hashed (a metaclass defining __eq__ alone)
        return _category(kind)


def might_hold(value: Any) -> bool:
    """Whether compiled code could reach a module or trainable tensor through value: a module, a callable, a tensor
    that is a parameter or a leaf requiring grad, or a non-empty built-in container (not a Python module: only
    the attributes a code object reads of one are followed, by `children`)."""
    try:
        kind = category(value)
        if kind is None or kind == "python module":
            return False
        if kind == "tensor":
            return isinstance(value, torch.nn.Parameter) or (value.requires_grad and value.is_leaf)
        return type(kind) is str or kind.__len__(value) > 0
    except Exception:  # a user's object: whatever it raises, it is not followed
        return False


def children(obj: Any) -> list[tuple[str, Any]]:
    """(label, value) for what obj holds that compiled code starting at it may read, one step away, by obj's type
    alone: a container's items (a dict's keys and values), a partial's function and arguments, a bound method's
    object and function, a function's closure, the globals its code loads (and the attributes it reads of those
    that are Python modules outside torch and the standard library), its defaults and attributes."""
    kind = category(obj)
    if kind is dict:
        return [(f"[{k!r}]" if type(k) in (str, int) else "[...]", v) for k, v in dict.items(obj)] + \
            [("key", k) for k in dict.keys(obj)]
    if kind in CONTAINERS:
        return [(f"[{i}]", v) for i, v in enumerate(kind.__iter__(obj))]
    if issubclass(type(obj), functools.partial):
        return [("func", obj.func), *(("arg", a) for a in obj.args), *obj.keywords.items()]
    if type(obj) is types.MethodType:
        return [("self", obj.__self__), ("func", obj.__func__)]
    if issubclass(type(obj), weakref.ref):
        return [("referent", weakref.ref.__call__(obj))]
    if type(obj) is LRU_WRAPPER or type(obj) is not types.FunctionType:
        return [("wrapped", obj.__wrapped__)] if type(obj) is LRU_WRAPPER else []
    space, (names, attributes) = obj.__globals__, loaded_names(obj.__code__)
    found = [("closure", v) for v in cell_values(obj)]
    for name in names:
        if name in space:
            value = space[name]
            found.append((f"global {name}", value))
            if type(value) is types.ModuleType and outside_libraries(value):
                found += [(f"{name}.{a}", value.__dict__[a]) for a in attributes if a in value.__dict__]
    found += [("default", v) for v in obj.__defaults__ or ()] + list((obj.__kwdefaults__ or {}).items())
    return found + list(obj.__dict__.items())


def outside_libraries(module: types.ModuleType) -> bool:
    """Whether a Python module is the user's: not torch's nor the standard library's."""
    top = (module.__name__ or "").split(".")[0]
    return top != "torch" and top not in sys.stdlib_module_names


def class_members(cls: type) -> list[tuple[str, Any]]:
    """(label, value) for what a module class and its bases outside torch hold that a compiled forward may run or
    read: their functions (forward, the helpers it calls; of the special methods those in SPECIAL_CALLED), the
    functions inside static and class methods and properties, and their other attributes (a layer shared by every
    instance)."""
    found = []
    for klass in cls.__mro__:
        if klass is object or (getattr(klass, "__module__", "") or "").startswith("torch."):
            continue
        for name, value in vars(klass).items():
            if name.startswith("__") and name.endswith("__") and name not in SPECIAL_CALLED:
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                found += [(f"{klass.__name__}.{name}", f) for f in (value.fget, value.fset) if f is not None]
            else:
                found.append((f"{klass.__name__}.{name}", value))
    return found


GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_pre_hooks",
                "_global_backward_hooks", "_global_forward_hooks_always_called")
MODULE_STATE = ("_modules", "_parameters")  # walked as the module's own (named_modules, its parameters)


def label(root: Any) -> str:
    """A root's name in paths: a function's qualified name, or the class of anything else (a module's)."""
    return root.__qualname__ if type(root) is types.FunctionType else type(root).__name__


def reached(roots: Iterable[Any], depth: int = 5) -> tuple[list[tuple[str, torch.nn.Module]], list[tuple[str, Any]]]:
    """((path, module) pairs, (path, tensor) pairs): the modules and the trainable tensors outside their
    `_parameters` (a parameter in a list or a global, a leaf tensor that requires grad in an attribute or a buffer)
    that code compiled from `roots` may read. Each module reached comes with its registered submodules (their paths
    in it); from them, what is reached in at most `depth` steps (`children`; a module's other attributes, buffers
    and class members one step away), breadth first, each object once. A path says how it was reached, to name it in
    a refusal."""
    modules: dict[int, tuple[str, torch.nn.Module]] = {}
    tensors: dict[int, tuple[str, Any]] = {}
    seen: set[int] = set()
    classes: dict[int, list] = {}
    queue = deque((label(root), root, depth) for root in roots)
    queue += [(f"torch's global module hooks ({name})", getattr(torch.nn.modules.module, name, {}), depth)
              for name in GLOBAL_HOOKS]  # they run at every module's call
    while queue:
        path, obj, left = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        kind = category(obj)
        if kind == "tensor":
            tensors[id(obj)] = path, obj
            continue
        nxt: list[tuple[str, Any]] = []
        try:  # a user's container or function may raise anything
            if kind == "module":
                for sub_path, m in obj.named_modules(prefix=path):
                    seen.add(id(m))
                    modules[id(m)] = sub_path, m
                    nxt += [(f"{sub_path}.{k}", v) for k, v in vars(m).items() if k not in MODULE_STATE]
                    if id(type(m)) not in classes:
                        classes[id(type(m))] = class_members(type(m))
                    nxt += [(f"{sub_path}: {label}", v) for label, v in classes[id(type(m))]]
            else:
                nxt = [(f"{path} {label}", v) for label, v in children(obj)]
        except Exception:
            pass
        if left:
            queue.extend((p, v, left - 1) for p, v in nxt if id(v) not in seen and might_hold(v))
    for _, m in modules.values():
        for p in m._parameters.values():
            tensors.pop(id(p), None)
    return list(modules.values()), list(tensors.values())


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
            candidates = [inner, compiler, *(v for _, v in children(compiler))]  # a user's function calling it
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
