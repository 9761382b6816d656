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
  what they hold outside them (plain attributes, slots and buffers, built-in containers and mapping proxies,
  callables: closures, defaults, attributes, partials, bound methods of Python and built-in functions, lru_cache
  wrappers, the globals their code loads and what it reads of the user's Python modules; weak references; the
  class's members; torch's global module hooks); a tensor computed from parameters counts as the leaves it came from.
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
    reads as attributes or names as strings (of a Python module among those globals: `config.MODEL`,
    `getattr(config, "MODEL")`)."""
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
        elif isinstance(const, str) and const.isidentifier():  # getattr(config, "MODEL")
            found[1].add(const)
    return tuple(sorted(found[0])), tuple(sorted(found[1]))


def _category(kind: type) -> type | str | None:
    if kind in CALLABLES or issubclass(kind, (functools.partial, weakref.ref)):
        return "callable"
    if issubclass(kind, torch.nn.Module):
        return "module"
    if issubclass(kind, torch.Tensor):
        return "tensor"
    if kind is types.ModuleType:
        return "python module"
    if kind is types.MappingProxyType:
        return dict
    return next((base for base in (*CONTAINERS, dict) if issubclass(kind, base)), None)


LRU_WRAPPER = type(functools.lru_cache()(lambda: None))
# functions, bound methods (of Python and built-in functions: `{"m": model}.get`, `[model].__getitem__`)
CALLABLES = (types.FunctionType, types.MethodType, types.BuiltinMethodType, types.MethodWrapperType, LRU_WRAPPER)
_category_cached = functools.lru_cache(maxsize=None)(_category)


def category_of_type(kind: type) -> type | str | None:
    """How compiled code could reach a module or trainable tensor through a value of this type, by the type alone:
    "module", "tensor", "callable" (a function, bound method, partial, lru_cache wrapper or weak reference), "python
    module", the built-in container type it derives from (whose own methods are read, never a subclass's), or None."""
    try:
        return _category_cached(kind)
    except TypeError:  # a type that cannot be hashed (a metaclass defining __eq__ alone)
        return _category(kind)


def category(value: Any) -> type | str | None:
    return category_of_type(type(value))


def might_hold(value: Any) -> bool:
    """Whether compiled code could reach a module or trainable tensor through value: a module, a callable, a tensor
    that is a parameter or requires grad, or a non-empty built-in container or mapping proxy (not a Python module:
    only the attributes a code object reads of one are followed, by `children`)."""
    try:
        kind = category(value)
        if kind is None or kind == "python module":
            return False
        if kind == "tensor":
            return isinstance(value, torch.nn.Parameter) or value.requires_grad
        if kind is dict and type(value) is types.MappingProxyType:
            return len(value) > 0
        return type(kind) is str or kind.__len__(value) > 0
    except Exception:  # a user's object: whatever it raises, it is not followed
        return False


def children(obj: Any) -> list[tuple[str, Any]]:
    """(label, value) for what obj holds that compiled code starting at it may read (might_hold), one step away, by
    obj's type alone: a container's items (a dict's keys and values), a partial's function and arguments, a bound
    method's object and function (a built-in one's object), a function's closure, the globals its code loads (the
    builtins it loads that the user set there too, and what it reads of those that are Python modules outside torch
    and the standard library), its defaults and attributes; what a weak reference or an lru_cache wrapper refers to."""
    kind = category(obj)
    if kind is dict:
        mapping = obj if type(obj) is not types.MappingProxyType else dict(obj.items())
        values, keys = dict.values(mapping), dict.keys(mapping)
        pairs = [(f"[{k!r}]" if type(k) in (str, int) else "[...]", v) for k, v in dict.items(mapping)
                 if might_hold(v)] if any_might_hold(values) else []
        return pairs + ([("key", k) for k in keys if might_hold(k)] if any_might_hold(keys) else [])
    if kind in CONTAINERS:
        items = list(kind.__iter__(obj))
        return [(f"[{i}]", v) for i, v in enumerate(items) if might_hold(v)] if any_might_hold(items) else []
    kind = type(obj)
    if issubclass(kind, functools.partial):
        found = [("func", obj.func), *(("arg", a) for a in obj.args), *obj.keywords.items()]
    elif kind is types.MethodType:
        found = [("self", obj.__self__), ("func", obj.__func__)]
    elif kind in (types.BuiltinMethodType, types.MethodWrapperType):
        found = [("self", obj.__self__)]
    elif issubclass(kind, weakref.ref):
        found = [("referent", weakref.ref.__call__(obj))]
    elif kind is LRU_WRAPPER:
        found = [("wrapped", obj.__wrapped__)]
    elif kind is types.FunctionType:
        found = function_children(obj)
    else:
        found = []
    return [(label, v) for label, v in found if might_hold(v)]


def any_might_hold(values: Iterable[Any]) -> bool:
    """Whether any of these values' types might hold a module or trainable tensor: a container of values of no such
    type (a dataset's million integers) is passed over at C speed."""
    return any(type_might_hold(t) for t in set(map(type, values)))


def type_might_hold(kind: type) -> bool:
    """Whether values of this type can reach a module or trainable tensor (might_hold, by the type alone)."""
    found = category_of_type(kind)
    return found is not None and found != "python module"


def function_children(fn: types.FunctionType) -> list[tuple[str, Any]]:
    """A function's closure, the globals (and user-set builtins) its code loads, what it reads of the user's Python
    modules among them (a package's submodules too), its defaults and attributes."""
    space, (names, attributes) = fn.__globals__, loaded_names(fn.__code__)
    builtins = space.get("__builtins__", {})
    builtins = builtins if isinstance(builtins, dict) else getattr(builtins, "__dict__", {})
    found = [("closure", v) for v in cell_values(fn)]
    for name in names:
        if name in space or name in builtins:
            value = space[name] if name in space else builtins[name]
            found.append((f"global {name}", value))
            found += module_attributes(value, name, attributes)
    found += [("default", v) for v in fn.__defaults__ or ()] + list((fn.__kwdefaults__ or {}).items())
    return found + list(fn.__dict__.items())


def module_attributes(module: Any, name: str, attributes: tuple[str, ...], depth: int = 3) -> list[tuple[str, Any]]:
    """What code may read of a user's Python module by these attribute names: `config.MODEL`, and through its
    submodules, `config.models.TEACHER`, a few levels deep."""
    if type(module) is not types.ModuleType or not outside_libraries(module) or depth == 0:
        return []
    found = []
    for a in attributes:
        if a in module.__dict__:
            value = module.__dict__[a]
            found.append((f"{name}.{a}", value))
            found += module_attributes(value, f"{name}.{a}", attributes, depth - 1)
    return found


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
MODULE_STATE = ("_modules", "_parameters")  # walked as the module's own (submodules, its parameters)


def label(root: Any) -> str:
    """A root's name in paths: a function's qualified name, or the class of anything else (a module's)."""
    return root.__qualname__ if type(root) is types.FunctionType else type(root).__name__


def reached(roots: Iterable[Any], depth: int = 5) -> tuple[list[tuple[str, torch.nn.Module]], list[tuple[str, Any]]]:
    """((path, module) pairs, (path, tensor) pairs): the modules and the trainable tensors outside their
    `_parameters` (a parameter in a list or a global, a leaf tensor that requires grad in an attribute or a buffer,
    the leaves a tensor computed from them was made from: a tied weight's `.t()`) that code compiled from `roots`
    may read. Each module reached comes with its registered submodules (their paths in it, read from `_modules`
    itself); from them, what is reached in at most `depth` steps (`children`; a module's other attributes, buffers
    and class members one step away), breadth first, each object once. A path says how it was reached, to name it
    in a refusal."""
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
        nxt: list[tuple[str, Any]] = []
        try:  # a user's container or function may raise anything
            if kind == "tensor":
                tensors.update((id(t), (path, t)) for t in trainable_leaves(obj))
                continue
            if kind == "module":
                for sub_path, m in submodules(obj, path, seen):
                    modules[id(m)] = sub_path, m
                    nxt += [(f"{sub_path}.{k}", v) for k, v in [*vars(m).items(), *slot_values(m)]
                            if k not in MODULE_STATE and might_hold(v)]
                    if id(type(m)) not in classes:
                        classes[id(type(m))] = class_members(type(m))
                    nxt += [(f"{sub_path}: {name}", v) for name, v in classes[id(type(m))] if might_hold(v)]
            else:
                nxt = [(f"{path} {name}", v) for name, v in children(obj)]
        except Exception:
            pass
        if left:
            queue.extend((p, v, left - 1) for p, v in nxt if id(v) not in seen)
    for _, m in modules.values():
        for p in (m.__dict__.get("_parameters") or {}).values():
            tensors.pop(id(p), None)
    return list(modules.values()), list(tensors.values())


@functools.lru_cache(maxsize=1024)
def slot_members(cls: type) -> tuple:
    """(name, descriptor, class) for the __slots__ of a class and its bases (fixed when a class is made)."""
    return tuple((name, member, klass) for klass in cls.__mro__ for name, member in vars(klass).items()
                 if type(member) is types.MemberDescriptorType)


def slot_values(obj: Any) -> list[tuple[str, Any]]:
    """(name, value) of the attributes obj keeps in its class's __slots__ (read through the slot descriptors)."""
    found = []
    for name, member, klass in slot_members(type(obj)):
        try:
            found.append((name, member.__get__(obj, klass)))
        except AttributeError:  # an empty slot
            pass
    return found


def submodules(root: torch.nn.Module, path: str, seen: set[int]) -> list[tuple[str, torch.nn.Module]]:
    """root and its registered submodules with their paths, read from each module's `_modules` (a module may
    override named_modules), each once (seen, shared with the walk)."""
    found = [(path, root)]
    for path, m in found:  # grows as it goes: breadth first, in registration order
        for name, sub in (m.__dict__.get("_modules") or {}).items():
            if sub is not None and id(sub) not in seen:
                seen.add(id(sub))
                found.append((f"{path}.{name}", sub))
    return found


def trainable_leaves(t: torch.Tensor, limit: int = 256) -> list[torch.Tensor]:
    """The tensors requiring grad that gradients through t reach: t itself if it is a parameter or a leaf that
    requires grad, else the leaves of its autograd graph (AccumulateGrad nodes' variables; at most `limit` nodes)."""
    if isinstance(t, torch.nn.Parameter) or (t.requires_grad and t.is_leaf):
        return [t]
    if t.grad_fn is None:
        return []
    found, todo, visited = [], [t.grad_fn], set()
    while todo and len(visited) < limit:
        node = todo.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            found.append(variable)
        todo += [n for n, _ in node.next_functions]
    return found


def compiled_with(backends: list) -> dict[int, list[Any]]:
    """id(backend) -> the live modules and functions that torch.compile compiled with one of `backends`
    (torch.compile(module), module.compile(), torch.compile(function); the backend given as is, or inside a function
    or partial that calls it). One scan of the garbage collector's objects (about 0.1 s)."""
    from torch._dynamo.eval_frame import OptimizedModule, innermost_backend
    wanted = {id(b) for b in backends}

    def backend_of(value) -> int | None:
        try:  # value may be a user's object (a compiled callable in a closure), whose attributes may raise anything
            callback = getattr(value, "callback", value)
            inner = innermost_backend(callback) if callable(callback) else None
            compiler = getattr(inner, "compiler_fn", None)  # torch.compile wraps it (_TorchCompileWrapper)
            # the backend itself, or what the user's function (its closure, globals, defaults) or partial calling it holds
            held = function_children(compiler) if type(compiler) is types.FunctionType else \
                [("", v) for v in (getattr(compiler, "func", None), *getattr(compiler, "args", ()))]
            candidates = [inner, compiler, *(v for _, v in held)]
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
        found.setdefault(owner, []).append(m)
    forwards = {id(m.__dict__.get(name)) for _, m in modules for name in ("forward", "_forward")}
    for owner, fn in functions:
        if id(fn) not in forwards:  # an OptimizedModule's own forward is counted with it
            found.setdefault(owner, []).append(fn)
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
