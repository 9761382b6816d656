"""Release guards: an optimizer step may only apply gradients that one noisy DP backward released.

Every trainable parameter of a live DP model is tracked (a weak registry). Two hooks on it see each
accumulation into .grad: before it, whether .grad continues what was recorded (same tensor, same
version) or starts afresh (None, or zeroed/replaced since); after it, what this backward was:
noisy (the engine's noise op drew in this autograd graph task), un-noised (a DP micro-step) or raw
(no DP backward in this task). A post-hook on each DP forward's backward node notes what it releases
for each parameter; the parameter's hook checks that exactly that arrives (nothing from outside the DP
model summed into it in the same backward). Global optimizer step pre-hooks refuse a step over a
parameter whose .grad holds un-noised clipped sums, raw gradients, a release mixed with an outside
gradient, or several noisy releases; post-hooks mark the release consumed. Optimizers over other parameters are untouched. Data parallel: a parameter's noisy
accumulation is reported to its engine (`released`, which starts the all-reduce of its bucket), and the
step pre-hook waits for the sums across ranks (`reduce`) after its checks, before the step. One process: the
engine notes the parameters a noisy release reached (`released`), and when its backward ends, every other
trainable parameter of the DP model gets a noise-only release (`release_absent`), as rank 0 adds it under data
parallelism: a parameter that a capture does not use (a branch on the batch size) would otherwise keep .grad None
and its weights, showing without noise which branch the private batch took.
"""
from __future__ import annotations

import gc
import types
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._pytree import tree_leaves
from torch.utils.hooks import unserializable_hook

from ..errors import ReleaseError
from . import reach

NOISY, UNNOISED, RAW = "noisy", "unnoised", "raw"


class TaskOwner(Protocol):
    """The privacy engine: which autograd graph task its noise op ran in, whether it drew noise; data parallel:
    a parameter's release of this step is final (`released`), the sums across ranks into .grad (`reduce`)."""

    handle: int  # creation order: the same on every rank
    generation: int  # bumped at each noisy release and each load_state_dict: the logical step micro-steps belong to

    def backward_kind(self, task: int) -> str | None: ...

    def released(self, param: torch.Tensor) -> None: ...

    def reduce(self) -> list[torch.Tensor]: ...


class GradState:
    """What a tracked parameter's .grad holds: counts of noisy / un-noised / raw accumulations since its last step.
    Its engines are weak references in creation order (the same on every rank)."""

    def __init__(self, name: str, param: torch.Tensor) -> None:
        self.name, self.engines = name, []
        key, registry = id(param), _TRACKED  # the registry held here: at exit, module globals may be gone first

        def forget(ref: weakref.ref) -> None:  # the parameter is gone: so is its entry
            if registry.get(key) is self:
                del registry[key]
        self.param = weakref.ref(param, forget)
        self.grad: weakref.ref | None = None
        self.version = -1
        self.continuing = False
        self.noisy = self.unnoised = self.raw = self.mixed = self.stale = 0
        self.releases = 0  # noisy releases accumulated into .grad, by any engine, ever (never reset)
        self.unnoised_in: tuple[int, int] | None = None  # (engine handle, generation) of the un-noised sums held
        self.expected: tuple[int, torch.Tensor] | None = None  # (graph task, what the DP backward released)
        self.arrived_mixed = False  # the gradient arriving now has more than the release in it
        # what a .grad that does not continue the recorded one held as the accumulation began: a 0-d bool tensor
        # (any value not zero), read at the step, not in the backward (no host sync per parameter); False: nothing
        self.held: torch.Tensor | bool = False
        self.foreign: torch.Tensor | bool = False  # the same, for the gradients accumulated since the last reset
        self.held_sums = self.foreign_sums = False  # what was held: this logical step's micro-step sums, changed

    def live_engines(self) -> list[TaskOwner]:
        """The parameter's engines still alive, in creation order."""
        if len(self.engines) == 1:  # the usual case, first: this runs for every parameter on every step
            engine = self.engines[0]()
            return [] if engine is None else [engine]
        return [engine for engine in (ref() for ref in self.engines) if engine is not None]

    def guarded_by(self, engine: TaskOwner) -> bool:
        return any(live is engine for live in self.live_engines())

    def add_engine(self, engine: TaskOwner) -> None:
        if not self.guarded_by(engine):  # (dead engines dropped on the way)
            self.engines = [weakref.ref(e) for e in sorted([*self.live_engines(), engine], key=lambda e: e.handle)]

    def discard_engine(self, engine: TaskOwner) -> None:
        self.engines = [ref for ref in self.engines if ref() is not None and ref() is not engine]

    def same_grad(self, grad: torch.Tensor | None) -> bool:
        """grad is the tensor recorded after the last accumulation, unmodified since."""
        return grad is not None and self.grad is not None and self.grad() is grad and grad._version == self.version

    def record(self, grad: torch.Tensor | None) -> None:
        self.grad = None if grad is None else weakref.ref(grad)
        self.version = -1 if grad is None else grad._version

    def reset(self) -> None:
        self.noisy = self.unnoised = self.raw = self.mixed = self.stale = 0
        self.unnoised_in = None
        self.foreign = False

    def look_at_held(self, grad: torch.Tensor | None) -> None:
        """Before an accumulation into `grad` (.grad now): does it continue what was recorded? If not, and it is a
        tensor, autograd adds the arriving gradient to whatever it holds: zeros (opt.zero_grad(set_to_none=False))
        are fine; anything else (a backward of the wrapped model before dpcompile, .grad set or written by hand)
        would reach the step summed with the release, neither clipped nor noised."""
        self.continuing = self.same_grad(grad)
        self.held = False if grad is None or self.continuing else nonzero(grad)
        self.held_sums = self.held is not False and self.unnoised > 0 and self.grad is not None and self.grad() is grad

    def accumulated(self, kind: str, generation: tuple[int, int] | None = None) -> None:
        """One backward's gradient added: a noisy one absorbs the un-noised micro-steps before it, if they belong to
        its logical step. `generation`: (handle, generation) of the engine whose backward it was. Micro-step sums
        of an earlier generation are stale: a noisy release was made since without them (torch.autograd.grad in the
        middle of an accumulation, or load_state_dict), so the noisy release absorbing them would add a sample of
        the earlier logical step to this one (sensitivity 2R)."""
        if not self.continuing:
            self.reset()
            self.foreign, self.foreign_sums = self.held, self.held_sums
        self.held, self.held_sums = False, False
        self.mixed += self.arrived_mixed
        self.arrived_mixed = False
        if kind == NOISY:
            if self.unnoised and (generation is None or self.unnoised_in != (generation[0], generation[1] - 1)):
                self.stale += 1
            self.noisy, self.unnoised = self.noisy + 1, 0
            self.releases += 1
        elif kind == UNNOISED:
            if not self.unnoised:
                self.unnoised_in = generation
            elif self.unnoised_in != generation:
                self.stale += 1
            self.unnoised += 1
        else:
            self.raw += 1

    def arrived(self, grad: torch.Tensor, task: int) -> None:
        """The gradient reaching .grad in graph task `task`: a DP backward's release for this parameter must
        arrive as it left (the same tensor, or equal values), not summed with a gradient from outside."""
        expected, self.expected = self.expected, None
        self.arrived_mixed = expected is not None and expected[0] == task and grad is not expected[1] \
            and not torch.equal(grad, expected[1])

    def one_release(self) -> bool:
        """The counts since the last reset are one noisy release and nothing else."""
        return self.noisy == 1 and not (self.mixed or self.raw or self.unnoised or self.stale)

    def problem(self) -> str | None:
        """Why .grad may not be applied, or None (the step's checks read the held values of all at once first:
        look_at_changed)."""
        if self.foreign is not False and bool(self.foreign):
            self.foreign = True
            if self.foreign_sums:
                return (f"the gradient of parameter '{self.name}' held clipped micro-step sums without noise that "
                        "were changed in place (clip_grad_norm_, a write by hand) before this logical step's noisy "
                        "backward: a change to sums not yet noised can move a sample's contribution beyond R. Change "
                        "the gradients after the noisy backward (just before opt.step()), or drop the micro-steps "
                        "(dp_model.privacy.drop_accumulated())")
            return (f"the gradient of parameter '{self.name}' holds values that no DP backward released (left by a "
                    "backward of the wrapped model before dpcompile, or .grad set or written in place by hand since "
                    "the last step, a DP backward then adding its release to them): they are neither clipped nor "
                    "noised. Clear the gradients (opt.zero_grad()) before the DP backward")
        self.foreign = False
        if self.one_release():  # the usual case, first
            return None
        if self.stale:
            return (f"the gradient of parameter '{self.name}' holds clipped sums of micro-steps of an earlier "
                    "logical step: a noisy release was made since without them (torch.autograd.grad during an "
                    "accumulation, or privacy.load_state_dict()), so this step would apply a sample of that step "
                    "twice, beyond the clipping bound. Drop them (dp_model.privacy.drop_accumulated(), or "
                    "opt.zero_grad()) and run the logical step's micro-batches again")
        if self.mixed:
            return (f"parameter '{self.name}' also got a gradient from outside the DP model in the same backward "
                    "(it is used on data outside the DP model, or a penalty on it is added to the loss): that part "
                    "is neither clipped nor noised. Compute everything that uses the parameter inside the DP "
                    "model; put weight decay in the optimizer (weight_decay=...), which acts after the release")
        if self.raw:
            return (f"the gradient of parameter '{self.name}' comes from a backward that did not run through the "
                    "DP model (the wrapped model was called directly, it is used outside the DP model, or a module "
                    "compiled with dpcompile.backend() ran inside another torch.compile, which compiles it with its "
                    "own backend): it is neither clipped nor noised. Call the DP model, not the model it wraps, "
                    "outside other compiled code if it comes from dpcompile.backend(), and clear the gradients "
                    "(opt.zero_grad()) before the next DP backward")
        if self.unnoised:
            return (f"the gradient of parameter '{self.name}' holds clipped per-sample sums without noise "
                    f"({self.unnoised} backward(s) inside privacy.accumulating() or an incomplete "
                    "gradient_accumulation_steps cycle since the last noisy backward). Finish the logical batch "
                    "with its noisy backward (the last micro-batch, outside accumulating(); an empty batch does), "
                    "or drop the partial batch with dp_model.privacy.drop_accumulated()")
        if self.noisy > 1:
            return (f"{self.noisy} noisy backwards were accumulated into the gradient of parameter '{self.name}' "
                    "for one optimizer step: a step applies one noisy release of one batch. Clear the gradients "
                    "(opt.zero_grad()) after each step, and accumulate micro-batches with "
                    "gradient_accumulation_steps=k or privacy.accumulating(), which add the noise once")
        return None


_TRACKED: dict[int, GradState] = {}  # id(parameter) -> its state; the entry goes with the parameter
_HOOKED_OPTIMIZERS = False


def state_of(p: Any) -> GradState | None:
    """p's state if p is a tracked parameter (a dict lookup: this runs for every parameter on every step)."""
    state = _TRACKED.get(id(p))
    return state if state is not None and state.param() is p else None


def track(engine: TaskOwner, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Guard these trainable parameters' releases for `engine` (hooks installed once per parameter)."""
    install_optimizer_hooks()
    for name, p in named_params:
        state = state_of(p)
        if state is None:
            state = _TRACKED[id(p)] = GradState(name, p)
            hook_parameter(p, state)
        state.add_engine(engine)


def hook_parameter(p: torch.Tensor, state: GradState) -> None:
    """Before an accumulation: does it continue the recorded .grad? After: count it by the backward's kind."""
    ref = weakref.ref(p)

    @unserializable_hook
    @torch._dynamo.disable  # hooks run as written, never traced (a backward inside a user's torch.compile'd code)
    def before(grad):
        param = ref()
        state.look_at_held(None if param is None else param.grad)
        state.arrived(grad, torch._C._current_graph_task_id())

    @unserializable_hook
    @torch._dynamo.disable
    def after(param):
        task = torch._C._current_graph_task_id()
        engines = state.live_engines()
        kinds = [engine.backward_kind(task) for engine in engines]
        kind = NOISY if NOISY in kinds else UNNOISED if UNNOISED in kinds else RAW
        owner = next((engine for engine, its_kind in zip(engines, kinds) if its_kind == kind), None)
        state.accumulated(kind, None if owner is None else (owner.handle, owner.generation))
        state.record(param.grad)
        if kind == NOISY:  # this step's release is final: data parallel reduces it now
            for engine, its_kind in zip(engines, kinds):
                if its_kind == NOISY:
                    engine.released(param)

    p.register_hook(before)
    p.register_post_accumulate_grad_hook(after)


def watch_release(outputs: Any) -> list:
    """Note, when the DP backward that produces `outputs`' gradients runs, what it releases for each tracked
    parameter (a post-hook on its autograd node), so that the parameter's own hook can tell whether anything
    from outside the DP model was summed into it. Returns those autograd nodes."""
    nodes = {id(t.grad_fn): t.grad_fn for t in tree_leaves(outputs)
             if isinstance(t, torch.Tensor) and t.grad_fn is not None}
    found = {id(f[0]): f for f in map(release_node, nodes.values()) if f is not None}
    for node, slots in found.values():
        node.register_hook(note_release(slots))
    return [node for node, _ in found.values()]


def tracked_inputs(node) -> list[tuple[int, GradState]]:
    """(input position, state) for the node's inputs that are tracked parameters (AccumulateGrad nodes)."""
    out = []
    for i, (n, _) in enumerate(node.next_functions):
        state = state_of(getattr(n, "variable", None))
        if state is not None:
            out.append((i, state))
    return out


def release_node(node, depth: int = 4):
    """(node, its tracked inputs) for the autograd node of the compiled DP backward: node itself or one a few
    steps below it (an output that is a view of another); None if there is none."""
    for _ in range(depth):
        slots = tracked_inputs(node)
        if slots:
            return node, slots
        nexts = [n for n, _ in node.next_functions if n is not None]
        if len(nexts) != 1:
            return None
        node = nexts[0]
    return None


def note_release(slots: list[tuple[int, GradState]]):
    """A post-hook for the DP backward's node: record each tracked parameter's released gradient."""
    @torch._dynamo.disable
    def hook(grad_inputs, grad_outputs) -> None:
        task = torch._C._current_graph_task_id()
        for i, state in slots:
            if grad_inputs[i] is not None:
                state.expected = (task, grad_inputs[i])
    return hook


def tracked_params(optimizer: torch.optim.Optimizer) -> Iterable[tuple[torch.Tensor, GradState, list[TaskOwner]]]:
    """The optimizer's parameters that belong to a live DP model, with their states and live engines."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = state_of(p)
            engines = state.live_engines() if state is not None else []
            if engines:
                yield p, state, engines


_MODELS: weakref.WeakSet = weakref.WeakSet()  # live DP models (their .module's parameters, as they are now)


def watch_model(model: torch.nn.Module) -> None:
    """A DP model whose wrapped module's parameters, whatever they are at a step, are DP parameters."""
    _MODELS.add(model)


def model_params(engine: TaskOwner) -> set[int] | None:
    """ids of the trainable parameters the DP model of `engine` has now; None if it has no DP model (backend())."""
    found = None
    for m in list(_MODELS):
        if getattr(m, "privacy", None) is engine:
            found = (found or set()) | {id(p) for p in m.module.parameters() if p.requires_grad}
    return found


@torch.no_grad()
def release_absent(engine: TaskOwner, reached: set[int], noise, fresh: bool = True) -> list[torch.Tensor]:
    """A noisy release of `engine` reached the parameters `reached` (ids); every other trainable parameter of its DP
    model gets the noise this release would have added to it, noise(numel, dtype, device) = N(0, σ²R²)/n, counted as
    its noisy release: added to .grad where that holds the clipped sums of this logical step's micro-steps, else
    .grad = the noise alone (not `fresh`, σ = 0: left as it is). Returns the parameters written."""
    current = model_params(engine)
    written = []
    for state in list(_TRACKED.values()):
        p = state.param()
        if p is None or id(p) in reached or not p.requires_grad or not state.guarded_by(engine):
            continue
        if current is not None and id(p) not in current:  # replaced or frozen since: no longer the DP model's
            continue
        state.continuing = state.same_grad(p.grad)
        if not (state.continuing or fresh):
            continue
        released_outside_backward(state, p, noise(p.numel(), p.dtype, p.device).view(p.shape),
                                  (engine.handle, engine.generation))
        written.append(p)
    return written


def released_outside_backward(state: GradState, p: torch.Tensor, z: torch.Tensor | None,
                              generation: tuple[int, int]) -> None:
    """Count p's noisy release of `generation` made outside its DP backward: .grad holds this logical step's micro-step
    sums (state.continuing) and z, the noise, is added to them (None: none), or .grad becomes z."""
    if not state.continuing:
        p.grad = z
    elif z is not None:
        p.grad.add_(z)
    state.arrived_mixed, state.held = False, False
    state.accumulated(NOISY, generation)
    state.record(p.grad)


def close_micro_steps(p: torch.Tensor, generation: tuple[int, int], noise=None) -> torch.Tensor | None:
    """Data parallel: p's .grad as its noisy release, if it holds micro-step sums of the logical step whose noisy
    release (of the engine `generation` names) did not reach p (it was used in an earlier micro-batch only), with
    noise(numel, dtype, device) added (the noising rank); None if it holds none. As `release_absent` in one process."""
    state = state_of(p)
    if state is None or not state.unnoised or not state.same_grad(p.grad):
        return None
    state.continuing = True
    released_outside_backward(state, p, None if noise is None else noise(p.numel(), p.dtype, p.device).view(p.shape),
                              generation)
    return p.grad


def refused(p: torch.Tensor | None) -> bool:
    """p's .grad may not be applied (a problem the step pre-hook refuses)."""
    state = state_of(p) if p is not None and p.grad is not None else None
    return state is not None and state.same_grad(p.grad) and state.problem() is not None


def refuse_outside_gradients(optimizer: torch.optim.Optimizer) -> None:
    """A step that applies a gradient no DP backward released (not all zeros), to a parameter that is untracked:
    refused when the same optimizer updates DP parameters (a layer after the DP model, a learned temperature in the
    loss: its gradient is the batch's, neither clipped nor noised) or when it belongs to a DP model's module now
    (replaced, or loaded with assign=True, and used outside the DP model before the DP model ran again)."""
    states = [(p, state_of(p)) for group in optimizer.param_groups for p in group["params"]]
    outside = [p for p, state in states if state is None and p.grad is not None]
    if not outside:
        return
    with_dp = any(state is not None and state.live_engines() for _, state in states)
    owned = {id(q): name for m in list(_MODELS) for name, q in m.module.named_parameters()}
    found = outside if with_dp else [p for p in outside if id(p) in owned]
    if found:  # zeros apply nothing (a frozen layer's gradients after zero_grad(set_to_none=False))
        found = [p for p, held in zip(found, any_nonzero([p.grad for p in found])) if held]
    if found:
        mine = [owned[id(p)] for p in found if id(p) in owned]
        what = (f"parameter(s) {mine[:4]} of a DP model, replaced since it last ran," if mine else
                f"{len(found)} parameter(s) outside the DP model (shapes {[tuple(p.shape) for p in found[:4]]})")
        raise ReleaseError(
            f"the optimizer would apply {what} whose gradients no DP backward released: neither clipped nor "
            "noised (a layer after the DP model, a learned temperature in the loss, or the wrapped model called "
            "directly). Put every trainable layer inside the model passed to dpcompile, and call the DP model")


_STANDALONE: weakref.WeakSet = weakref.WeakSet()  # live standalone DP backends (torch.compile(..., backend=...))
# what the last scan found compiled with a live standalone backend (weak references to the compiled modules and
# functions), valid for the key it was made for
_FOUND: dict = {"key": None, "compiled": []}


class Standalone(Protocol):
    privacy: TaskOwner
    wrapped: list  # weak references to what torch.compile wrapped it for (wrapping_refs())


def watch_standalone(backend: Standalone) -> None:
    """A standalone DP backend tracks the parameters it captures, from its first capture; the optimizer step looks
    for the modules compiled with it (refuse_compiled_elsewhere)."""
    install_optimizer_hooks()
    _STANDALONE.add(backend)


COMPILED_MESSAGE = (
    "the optimizer would apply parameter(s) {names} that code compiled with dpcompile.backend(...) reaches (each named "
    "by the path it is reached by), but whose backend never captured them: no DP backward made these gradients, so "
    "they are neither clipped nor noised. A module compiled this way and called inside another torch.compile (a "
    "compiled training step, torch.compile of a model holding it) is compiled by the outer backend instead: Dynamo "
    "inlines it. Call the module compiled with dpcompile.backend() outside any other torch.compile, or use "
    "dpcompile.dpcompile(model, ...), whose DP model works inside compiled code; train the model without DP only "
    "before compiling it with the DP backend, or after ending its guards with backend.privacy.untrack() (also where "
    "the DP compile failed, or the backend was never called); use one "
    "backend per model; and where the compiled module reaches a model it never runs (a method reading a global), "
    "pass that model as an argument instead")


def refuse_compiled_elsewhere(optimizer: torch.optim.Optimizer) -> None:
    """A step over gradients of untracked parameters that code compiled with a standalone DP backend reaches. The
    backend tracks the parameters it captures, from its first capture; an untracked one with a gradient got it from
    elsewhere: the module called inside another torch.compile is compiled by the outer backend (Dynamo inlines it),
    so its gradients are the batch's, neither clipped nor noised; or the model was called without its compiled
    wrapper. What was compiled with a DP backend is found by a scan of Python's objects (reach.compiled_with, about
    0.1 s), kept until a backend is made or dropped, torch.compile wraps a DP backend (`wrapped`) or Dynamo compiles
    a graph (the outer compile of a module), so training another model without DP alongside scans once, not at every
    step; with what torch.compile wrapped a DP backend for (a compile of the compiled module unwraps it, and nothing
    else may hold it). The parameters those reach (reach.reached: held in lists, closures, globals, ...) are looked up
    at every such step, as a parameter can move into a DP-compiled module at any time."""
    stepped = {id(p): p for group in optimizer.param_groups for p in group["params"]
               if p.grad is not None and not ((state := state_of(p)) is not None and state.live_engines())}
    if not stepped:
        return
    graphs = torch._dynamo.utils.counters["stats"]
    key = (frozenset(map(id, _STANDALONE)), _WRAPS[0], id(graphs), graphs["unique_graphs"])
    if _FOUND["key"] != key:
        _FOUND["key"], _FOUND["compiled"] = key, dp_compiled()
    names = dp_trained_names(stepped)
    if names:  # confirmed after a collection and a fresh scan: the scan also sees garbage that reference cycles hold
        gc.collect()
        _FOUND["compiled"] = dp_compiled()
        names = dp_trained_names(stepped)
    if names:
        raise ReleaseError(COMPILED_MESSAGE.format(names=names[:4]))


def dp_compiled() -> list[weakref.ref]:
    """Weak references to the live modules and functions compiled with a live standalone DP backend."""
    return [weakref.ref(compiled) for found in reach.compiled_with(list(_STANDALONE)).values() for compiled in found]


def dp_trained_names(params: dict[int, torch.Tensor]) -> list[str]:
    """Names of those of `params` (by id) that code compiled with a live standalone DP backend reaches."""
    compiled = [root for ref in _FOUND["compiled"] if (root := compiled_root(ref())) is not None]
    known = {id(root) for root in compiled}  # the common case: the compiled module wraps the model it was made for
    wrapped = [r for b in list(_STANDALONE) for ref in b.wrapped if (r := ref()) is not None and id(r) not in known]
    names: dict[int, str] = {}
    for roots in (compiled, wrapped):  # the compiled modules' paths first, which say how a parameter is reached
        if not roots:
            continue
        modules, loose = reach.reached(roots)
        for path, m in modules:
            names.update((id(p), f"{path}.{n}") for n, p in (m.__dict__.get("_parameters") or {}).items()
                         if p is not None and id(p) in params and id(p) not in names)
        names.update((id(t), f"{path} (a tensor outside any module's parameters)") for path, t in loose
                     if id(t) in params and id(t) not in names)
    return list(names.values())


def compiled_root(compiled: Any) -> Any:
    """What a compiled module's (the module it wraps) or function's graphs start from; None for one collected."""
    if compiled is None:
        return None
    if isinstance(compiled, torch.nn.Module):
        return compiled._modules.get("_orig_mod", compiled)
    return compiled.__dict__.get("_torchdynamo_orig_callable")


_WRAPS = [0]  # how many times torch.compile has wrapped a DP backend (DPBackend.__name__): what it compiled changed


def wrapped() -> None:
    """torch.compile is wrapping a DP backend: what it compiled changed."""
    _WRAPS[0] += 1


def wrapping_refs() -> list[weakref.ref]:
    """Weak references to what the callable torch.compile is wrapping a standalone DP backend for
    (reach.wrapping_model) starts from, which a compile of the compiled module unwraps and nothing else may hold:
    the module (a module's own, or its bound method's: module.compile()), walked again at each look; else the
    modules and loose parameters the callable reaches now, and the callable itself if it can be weakly referenced."""
    try:  # the user's callable: its attributes may raise anything
        model = reach.wrapping_model()
        if model is None:
            return []
        owner = model.__self__ if type(model) is types.MethodType else model
        if issubclass(type(owner), torch.nn.Module):
            return [weakref.ref(owner)]
        modules, loose = reach.reached([model])
        refs = [weakref.ref(x) for _, x in [*modules, *loose]]
        if type(model) is types.FunctionType:  # a bound method would be collected at once
            refs.append(weakref.ref(model))
        return refs
    except Exception:
        return []


@torch._dynamo.disable
def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple | None:
    """Refuse the step (before it changes anything) unless every DP gradient is one noisy release. A step given a
    closure (opt.step(closure)) makes its gradients inside, after this hook: the closure is wrapped so that the same
    checks follow each of its calls, before the step uses what it computed."""
    if not (_STANDALONE or len(_TRACKED)):
        return None
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0]: the optimizer
    if not callable(closure):
        check_step(optimizer)
        return None

    def checked():
        loss = closure()
        check_step(optimizer)
        return loss
    if "closure" in kwargs:
        return args, {**kwargs, "closure": checked}
    return (args[0], checked, *args[2:]), kwargs


@torch._dynamo.disable
def check_step(optimizer: torch.optim.Optimizer) -> None:
    """The step's checks over the gradients as they are now; data parallel: then the sums across ranks."""
    if _STANDALONE:
        refuse_compiled_elsewhere(optimizer)
    if not len(_TRACKED):
        return
    refuse_outside_gradients(optimizer)
    engines: dict[int, TaskOwner] = {}
    tracked = list(tracked_params(optimizer))
    look_at_changed([(p, state) for p, state, _ in tracked if p.grad is not None])
    for p, state, its_engines in tracked:
        for engine in its_engines:
            engines[id(engine)] = engine
        if p.grad is None:
            continue
        if state.grad is None or state.grad() is not p.grad:  # in-place changes since (clipping, zeroing) are fine
            raise ReleaseError(f"the gradient of parameter '{state.name}' was not produced by a backward through "
                               "the DP model (.grad was set by hand, or was there before the DP model was made): "
                               "clear it with opt.zero_grad() and run the DP model's backward")
        problem = state.problem()
        if problem:
            raise ReleaseError(problem)
    for engine in sorted(engines.values(), key=lambda e: e.handle):  # data parallel: Σ over ranks (noise: rank 0's)
        for p in engine.reduce():
            _TRACKED[id(p)].record(p.grad)


def look_at_changed(grads: list[tuple[torch.Tensor, GradState]]) -> None:
    """Before the step's checks: what .grad holds where it was written in place since its last accumulation or step
    (opt.zero_grad(set_to_none=False), clip_grad_norm_, a copy_ by hand) and its counts are not one clean noisy
    release (that release post-processed in place, by clipping say, is fine whatever it holds), and what an accumulation
    found in a .grad it did not continue (GradState.look_at_held), read with one host sync per device, not one per
    parameter. Zeros apply nothing, whatever was counted before (the counts start afresh); values where nothing was
    accumulated since the last step, or found under an accumulation, were released by no DP backward
    (GradState.foreign)."""
    changed = [(p, state) for p, state in grads if (state.foreign is not False or not state.one_release())
               and state.grad is not None and state.grad() is p.grad and p.grad._version != state.version]
    held = [state for _, state in grads if isinstance(state.foreign, torch.Tensor)]
    found = any_nonzero([p.grad.detach() for p, _ in changed] + [state.foreign for state in held])
    for (p, state), nonzero in zip(changed, found):
        if not nonzero:
            state.reset()
            state.record(p.grad)
        elif not (state.noisy or state.unnoised or state.raw):
            state.foreign = True
    for state, nonzero in zip(held, found[len(changed):]):
        if isinstance(state.foreign, torch.Tensor):  # (not just reset: zeros now)
            state.foreign = nonzero


def nonzero(t: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor on t's device: t has a value other than zero (a sparse gradient: a stored value)."""
    t = t.detach()
    return (t._values() if t.is_sparse else t).ne(0).any()


def any_nonzero(tensors: list[torch.Tensor]) -> list[bool]:
    """Whether each tensor has a value other than zero (a bool tensor: is True), one host read per device."""
    by_device: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    found = [False] * len(tensors)
    for device, indices in by_device.items():
        flags = torch.stack([nonzero(tensors[i]) for i in indices]).tolist()
        for i, flag in zip(indices, flags):
            found[i] = flag
    return found


@torch._dynamo.disable
def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """The release was applied: the gradients now count as consumed (a later backward adds to nothing new)."""
    if not len(_TRACKED):
        return
    for p, state, _ in tracked_params(optimizer):
        state.reset()
        if p.grad is not None:
            state.record(p.grad)


def install_optimizer_hooks() -> None:
    """torch's global optimizer step hooks, once per process."""
    global _HOOKED_OPTIMIZERS
    if not _HOOKED_OPTIMIZERS:
        register_optimizer_step_pre_hook(before_step)
        register_optimizer_step_post_hook(after_step)
        _HOOKED_OPTIMIZERS = True


def drop(engine: TaskOwner) -> None:
    """Set to None the .grad of every parameter `engine` guards, and forget what it held."""
    for state in list(_TRACKED.values()):
        p = state.param()
        if p is not None and state.guarded_by(engine):
            p.grad = None
            state.reset()
            state.record(None)


def releases_of(params: Iterable[torch.Tensor]) -> int:
    """The most noisy releases any of these parameters has had, from any DP model, live or gone."""
    return max((state.releases for p in params if (state := state_of(p)) is not None), default=0)


def guarded_params(engine: TaskOwner) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) for the live parameters `engine` guards."""
    return [(state.name, p) for state in list(_TRACKED.values())
            if (p := state.param()) is not None and state.guarded_by(engine)]


def untrack(engine: TaskOwner) -> None:
    """Stop guarding `engine`'s parameters (its DP model is gone, or privacy.untrack() was called)."""
    for backend in [b for b in list(_STANDALONE) if b.privacy is engine]:
        _STANDALONE.discard(backend)
    for state in list(_TRACKED.values()):
        state.discard_engine(engine)
