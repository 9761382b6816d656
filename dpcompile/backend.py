"""The torch.compile backend: capture (Dynamo + AOTAutograd), the DP passes, lowering.

    torch.compile(model, backend=dpcompile.backend(max_grad_norm=1.0, noise_multiplier=1.0), fullgraph=True)
"""
from __future__ import annotations

import logging
import math
import re
import warnings
import weakref
from collections.abc import Callable

import torch
import torch.fx as fx
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.partitioners import min_cut_rematerialization_partition
from torch._guards import detect_fake_mode
from torch._inductor.decomposition import select_decomp_table
from torch.utils._pytree import tree_leaves

from . import passes
from .config import DPConfig
from .errors import ConfigError, DPCompileError, SampleMixingError, surfacing
from .precision import precise_products, restore, set_precise, tf32_kinds
from .privacy import guard
from .privacy.engine import PrivacyEngine

aten = torch.ops.aten

INPUT_REQUIRES_GRAD = (  # the DP model's call and the backend form's capture
    "an input of the DP model requires grad: a trainable layer in front of the DP model would receive raw, unclipped "
    "per-sample gradients through it. Put the trainable layers inside the model passed to dpcompile (or compiled with "
    "dpcompile.backend()), or detach the input")

log = logging.getLogger(__name__)


class DPBackend:
    """Compiles a captured model so its backward yields DP-SGD gradients; keeps every stage's graph."""

    def __init__(self, config: DPConfig, param_names: dict[int, str] | None = None,
                 privacy: PrivacyEngine | None = None, tracked: set[int] | None = None) -> None:
        self.config = config
        self.param_names = param_names or {}
        self.privacy = privacy if privacy is not None else PrivacyEngine(config)  # owns noise, counters, guards
        self.graphs: dict[str, fx.GraphModule] = {}
        self.error: BaseException | None = None
        self.first_outputs: list | None = None  # a capture's first call's outputs computed from the batch
        self.compilations = 0
        # The trainable parameters (ids) the release guards track for this backend's engine: a DP model's, given; a
        # standalone backend's (torch.compile(..., backend=dpcompile.backend(...))), those it captures.
        self.standalone = tracked is None
        self.tracked: set[int] = set() if tracked is None else tracked
        self.wrapped: list[weakref.ref] = []  # what torch.compile wrapped this backend for (guard.wrapping_refs)
        if self.standalone:
            guard.watch_standalone(self)

    @property
    def __name__(self) -> str:
        """Read by torch.compile when it wraps this backend (torch._TorchCompileWrapper; compiler_name by
        torch._dynamo.optimize): the release guards' scan must look again (guard.refuse_compiled_elsewhere), and a
        standalone backend notes the modules it is wrapped for."""
        guard.wrapped()
        if self.standalone:
            live = {id(m): ref for ref in [*self.wrapped, *guard.wrapping_refs()] if (m := ref()) is not None}
            self.wrapped = list(live.values())
        return "dpcompile.backend"

    compiler_name = __name__

    def take_error(self) -> BaseException:
        """The error a compilation kept for the next call (AOTAutograd may only log a backward's), now raised: later
        calls are not failed by it (a refused batch of one must not stop every later batch size)."""
        error, self.error = self.error, None
        return error

    def __call__(self, gm: fx.GraphModule, example_inputs):
        try:
            return self.compile(gm, example_inputs)
        except DPCompileError as err:  # through Dynamo as itself, not wrapped in BackendCompilerFailed
            raise surfacing(err) from err

    def compile(self, gm: fx.GraphModule, example_inputs):
        refuse_partial_capture()
        if self.standalone and self.privacy.world_size > 1:
            raise ConfigError(
                "data parallel: rank 0 alone adds the noise, so the ranks' clipped sums must be summed before the step, "
                "which the DP model of dpcompile.dpcompile() does; dpcompile.backend() runs in one process only")
        self.compilations += 1
        self.graphs["dynamo"] = gm
        ctx = self.context(gm, example_inputs)
        passes.safety.refuse_batch_size_guards(example_inputs, ctx.batch)
        checked = passes.safety.SampleCheck(copy_graph(gm), ctx.batch, self.user_inputs, ctx.views)
        if self.config.backend == "inductor":  # inductor's own AOT path (layouts, strides), our passes inside
            from torch._inductor.compile_fx import compile_fx
            # AOTAutograd's cache is keyed on the captured graph, not on our rewrite (R, σ, noise source):
            # a hit would skip the passes and reuse another model's backward. Inductor's own graph cache
            # keys on the rewritten graph and stays on: so compile_fx gets inductor's own decompositions (a
            # table of our own would go into that key, where most of its functions do not pickle, and bypass the
            # cache); ops they leave without a per-sample form are expanded by passes.expand_composites.
            # Inductor's CUDA matmul padding (pad_mm) pads odd-sized products and slices the result, which
            # would hide a weight gradient behind a slice; it is turned off for the DP graphs alone. So are a
            # user's global CUDA graphs (triton.cudagraphs=True); cuda_graphs=True records them with the noise op
            # partitioned out (dp_graph_settings), as a replay of it would skip its host side (the step count, the
            # generator's draw) and add the captured noise again.
            with torch._functorch.config.patch(enable_autograd_cache=False), \
                    torch._inductor.config.patch(dp_graph_settings(self.config)):
                compiled = compile_fx(gm, example_inputs,
                                      inner_compile=lambda g, ex, **kw: self.compile_graph(g, ex, ctx, kw))
        else:
            import torch._inductor.lowering as _lowering  # noqa: F401  (inductor's max-pool decomposition reads it)
            compiled = aot_autograd(
                fw_compiler=lambda g, ex: self.compile_graph(g, ex, ctx, {}),
                bw_compiler=lambda g, ex: self.compile_graph(g, ex, ctx, {"is_backward": True}),
                decompositions=select_decomp_table(),
                partition_fn=min_cut_rematerialization_partition,
                keep_inference_input_mutations=True,  # buffer writes stay copy_ nodes, which the safety pass reads
            )(gm, example_inputs)
        compiled = self.recording_first_outputs(checked.before(compiled), batch_outputs(gm, self.user_inputs))
        return guarding_releases(compiled, self, ctx.params) if self.standalone else compiled

    def recording_first_outputs(self, compiled: Callable, positions: list[int]) -> Callable:
        """compiled, keeping its first call's outputs computed from the batch (positions in Dynamo's graph) in
        self.first_outputs, for the DP model to check that each reaches its caller (stored_batch_values)."""
        boxed, first = getattr(compiled, "_boxed_call", False), True

        def run(*args):
            nonlocal first
            outs = compiled(*args)
            if first:
                first = False
                self.first_outputs = [weakref.ref(outs[i]) for i in positions  # weak: unread outside a DP model
                                      if i < len(outs) and isinstance(outs[i], torch.Tensor)]
            return outs
        run._boxed_call = boxed
        return run

    def context(self, gm: fx.GraphModule, example_inputs) -> passes.PassContext:
        """Which inputs are trainable parameters (and their names), and the batch symbol: dim 0 of the
        user's tensor arguments (never of parameters, buffers or constants)."""
        placeholders = list(gm.graph.find_nodes(op="placeholder"))
        params, new = [], []
        for i, (node, value) in enumerate(zip(placeholders, example_inputs)):
            if isinstance(value, torch.nn.Parameter) and value.requires_grad:
                params.append(passes.ParamSpec(self.param_names.get(id(value)) or source_name(node), i))
                if id(value) not in self.tracked:
                    new.append((params[-1].name, value))
        self.user_inputs = user_input_positions(placeholders, example_inputs)
        refuse_trainable_non_parameters(placeholders, example_inputs, self.user_inputs)
        trainable = [_name(_source_of(placeholders[i])) for i in self.user_inputs if example_inputs[i].requires_grad]
        if torch.is_grad_enabled() and trainable:  # the DP model refuses it at its call; Dynamo guards requires_grad
            raise ConfigError(f"argument {trainable[0]}: {INPUT_REQUIRES_GRAD}")
        unify_batch_sizes(placeholders, self.user_inputs)
        batch = batch_symbol(placeholders, self.user_inputs)
        names = tuple(p.name for p in params)
        if self.config.clip_groups is not None:
            grouped = {n for g in self.config.clip_groups for n in g}
            missing = [n for n in names if n not in grouped]
            if missing:
                raise ConfigError(
                    f"parameter(s) {missing} are trainable but in no clip group: they were unfrozen (requires_grad "
                    "set) or added after dpcompile() fixed the groups, and their gradient cannot be released "
                    "unclipped. Call dpcompile() again on the model as it is now (with clip_groups naming them), or "
                    "freeze them (requires_grad_(False)).")
        if new:  # unfrozen or added since dpcompile() (standalone: all, at the first capture): clipped, and guarded
            self.privacy.track(new)
            self.tracked.update(id(v) for _, v in new)
        groups = self.config.clip_groups or (names,)
        bounds = within_bound(self.config.clip_group_norms, self.config.max_grad_norm) \
            if self.config.clip_group_norms else split_bound(self.config.max_grad_norm, len(groups))
        clip = passes.ClipSpec(
            groups=groups, bounds=bounds, loss_reduction=self.config.loss_reduction,
            expected_batch_size=self.config.expected_batch_size, clipping=self.config.clipping,
            clip_stability=self.config.clip_stability, noise_handle=self.privacy.handle)
        device = next((v.device for v in example_inputs if isinstance(v, torch.nn.Parameter)), torch.device("cpu"))
        return passes.PassContext(tuple(params), batch, self.config.policy, clip,
                                  views=self.config.augmentation_multiplicity,
                                  tf32=tf32_kinds(self.config.per_sample_tf32, device),
                                  ghost_tf32=tf32_kinds(self.config.ghost_tf32, device),
                                  inductor=self.config.backend == "inductor",
                                  auto_extra_memory=self.config.auto_extra_memory)

    def compile_graph(self, gm: fx.GraphModule, example_inputs, ctx: passes.PassContext, kwargs: dict):
        """The forward: the safety check. The backward: the DP passes. Then lowering."""
        backward = kwargs.get("is_backward", False)
        self.graphs["backward" if backward else "forward"] = gm
        try:
            if not backward:
                captured = len(self.graphs["dynamo"].graph.find_nodes(op="placeholder"))
                same = len(gm.graph.find_nodes(op="placeholder")) == captured  # AOT keeps Dynamo's inputs in order
                passes.check_sample_independence(gm, ctx, self.user_inputs if same else None)
                passes.safety.refuse_backward_reads_of_written_inputs(gm)
                return self.lower(gm, example_inputs, kwargs)
            example_inputs = restride_saved_tensors(gm, example_inputs)
            with precise_products():
                gm = passes.run_pipeline(gm, ctx)
                self.graphs["backward_rewritten"] = gm
                self.privacy.half_products |= has_half_products(gm)
                # lowered inside precise_products(): Triton GEMM templates fix TF32 now
                compiled = self.lower(gm, example_inputs, kwargs)
            return compiled if self.config.backend == "inductor" else fp32_boxed(compiled)
        except BaseException as exc:  # AOTAutograd may only log a backward error: keep it for the next step
            self.error = exc
            raise

    def lower(self, gm: fx.GraphModule, example_inputs, kwargs: dict):
        """Inductor kernels, or the graph run as it is (backend='eager'). Where inductor's C++ wrapper (the user's
        cpp_wrapper=True) fails on a graph, it is compiled again with the Python wrapper; where inductor itself fails
        (its CUDA code generation can fail on a recompile for a batch of one: "CantSplit"), the graph runs as it is.
        Either with a warning: the same ops, so the same clipping and noise, only slower."""
        if self.config.backend == "eager":
            return make_boxed_func(gm.forward)
        if gm.meta.get(passes.safety.EAGER_ONLY):  # a one-sample graph inductor would misread: correct, slower
            log.debug("a graph runs without inductor: %s", gm.meta[passes.safety.EAGER_ONLY])
            run = make_boxed_func(gm.forward)
            return fp32_boxed(run) if kwargs.get("is_backward") else run
        from torch._inductor.compile_fx import compile_fx_inner
        from torch._inductor.exc import InductorError
        channels_last = STATIC_BATCH_LAYOUT and layout_as_if_static(gm, is_inference=kwargs.get("is_inference", False))
        graph = "backward" if kwargs.get("is_backward") else "forward"
        wrappers = [{"cpp_wrapper": True}, {"cpp_wrapper": False}] if torch._inductor.config.cpp_wrapper else [{}]
        for wrapper in wrappers:
            # inductor's passes rewrite the graph they lower in place (before they can fail): they get a copy, and gm
            # stays as made, for dp_model.graphs, the next attempt and the last resort
            work = copy_graph(gm)
            try:
                with torch._inductor.config.patch({**wrapper, **({"force_layout_optimization": True}
                                                                  if channels_last else {})}):
                    return compile_fx_inner(work, example_inputs, **kwargs)
            except InductorError as exc:
                failed = f"inductor could not compile a {graph} graph ({inductor_error_summary(exc)})"
                if wrapper is not wrappers[-1]:
                    warnings.warn(f"dpcompile: with its C++ wrapper {failed}; it is compiled with the Python wrapper "
                                  f"instead (correct; the host's part of each call slower). Please report it.",
                                  RuntimeWarning, stacklevel=2)
        warnings.warn(f"dpcompile: {failed}; it runs without inductor (correct, slower). Please report it.",
                      RuntimeWarning, stacklevel=2)
        fallback = make_boxed_func(gm.forward)
        return fp32_boxed(fallback) if kwargs.get("is_backward") else fallback


def inductor_error_summary(exc: BaseException) -> str:
    """An inductor error's first line, and the op a LoweringException names ("target: ..." on a later line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines()] or [type(exc).__name__]
    return "; ".join([lines[0][:200]] + [line for line in lines[1:] if line.startswith("target:")][:1])


# The DP graphs' layouts as inductor picks them for a graph with a static batch (layout_as_if_static), as for the
# same model compiled without DP. On: on an H200 (2026-12-03, same call) it took cuDNN's NCHW↔NHWC conversions out of
# the DP step and its device time from 10.18 to 8.87 ms (WRN-16-4) and 12.62 to 10.92 ms (ResNet-18) (NOTES.md).
STATIC_BATCH_LAYOUT = True


def layout_as_if_static(gm: fx.GraphModule, *, is_inference: bool) -> bool:
    """Inductor's layout choice for a graph (channels-last around its convolutions, or the default) made as for a
    static batch size. Inductor keeps the default layout in any graph where a convolution's input has a symbolic size
    (GraphLowering.decide_layout_opt, after a 2023 slowdown of dynamic-shape timm models: pytorch#102670), and the DP
    graphs' batch is always symbolic; so without this a DP forward may run NCHW where non-private torch.compile of
    the same model (static batch) runs channels-last. Every other rule of inductor's choice (grouped convolutions,
    wide inputs, small channels, the CPU's mkldnn) still decides. The layout changes strides only: the saved
    activations come to the backward permuted (restride_saved_tensors), and no value the rewrite computes depends on
    memory order (its clipped sums follow a per-sample gradient's storage order for speed only: rewrite.weighted_sum).
    (Inductor's own layout_opt argument is read only by its freezing path, so the choice reaches the graph as
    force_layout_optimization.)"""
    import torch._inductor.graph as graph
    if not hasattr(graph, "has_free_symbols"):  # another torch's heuristic: its own choice
        return graph.GraphLowering.decide_layout_opt(gm, is_inference=is_inference)
    from unittest import mock
    with mock.patch.object(graph, "has_free_symbols", lambda *_: False):
        return graph.GraphLowering.decide_layout_opt(gm, is_inference=is_inference)


# Inductor settings forced for the DP graphs, whatever the user's global inductor config says.
DP_GRAPH_SETTINGS = {"shape_padding": False, "triton.cudagraphs": False}
# A user's global max_autotune, off for the DP graphs: its GEMM choices for a Gram product of a view of the output
# gradient wrote the first batch size into the DP backward's code as a number (torch 2.13, CPU: "Expected size for
# first two dimensions of batch2 tensor to be: [16, 128] but got: [2, 128]" at the next batch size).
DP_GRAPH_SETTINGS.update({key: False for key in ("max_autotune", "max_autotune_gemm", "max_autotune_pointwise")
                          if hasattr(torch._inductor.config, key)})
# cuda_graphs=True: the DP graphs are recorded as CUDA graphs, split at the noise op (tagged cudagraph_unsafe),
# which runs outside them on every step.
CUDA_GRAPH_SETTINGS = {"triton.cudagraphs": True, "graph_partition": True}
# Inductor's options that bend IEEE arithmetic, off for the DP graphs (where this torch has them): the certified norms
# assume that each operation rounds once, to nearest, in the order written, with gradual underflow. Fast math in the
# CPU kernels (-funsafe-math-optimizations: reassociation, reciprocals), FMA contraction in them (the CPU default is
# off; a contraction may differ between two kernels that recompute one operand), Triton's fast exp, and the CUDA, XPU
# and ROCm kernels' fast math. (Triton's libdevice functions flush fp32 subnormals unless eager_numerics.disable_ftz;
# the bounds' own arithmetic is float64, which they never flush, so that stays as the user has it.) And
# emulate_precision_casts: inductor computes bf16/fp16 values in fp32, and where one Triton kernel both stores such a
# value (rounded, for a matrix product to read) and reduces it (a row norm, a per-sample norm), the reduction reads
# the value before its rounding (inductor's store cache): the norm would bound a gradient other than the one the
# stored operands give, by up to 2⁻⁸ relative per operand in bf16. With it, each such value is rounded where eager
# rounds it, before any use (and Triton's FMA contraction is off, as the C++ kernels' is).
STRICT_ARITHMETIC = {"cpp.enable_unsafe_math_opt_flag": False, "cpp.enable_floating_point_contract_flag": "off",
                     "use_fast_math": False, "cuda.use_fast_math": False, "cutlass.use_fast_math": False,
                     "xpu.use_fast_math": False, "rocm.use_fast_math": False, "rocm.flush_denormals": False,
                     "emulate_precision_casts": True}


def strict_arithmetic() -> dict:
    """STRICT_ARITHMETIC's options that this torch's inductor config has (the contraction flag was a bool before it
    took "off" / "on" / "fast")."""
    current = torch._inductor.config.get_config_copy()
    return {key: False if isinstance(value, str) and isinstance(current[key], bool) else value
            for key, value in STRICT_ARITHMETIC.items() if key in current}


def dp_graph_settings(config: DPConfig) -> dict:
    """The inductor settings for a DP model's graphs (their cached code keyed on the lowerings' source too)."""
    from .ops import lowering_cache_settings
    settings = {**DP_GRAPH_SETTINGS, **strict_arithmetic(), **lowering_cache_settings()}
    if not config.cuda_graphs:
        return settings
    from .ops import OUTSIDE_CUDA_GRAPHS
    if not OUTSIDE_CUDA_GRAPHS or not hasattr(torch._inductor.config, "graph_partition"):
        raise ConfigError(f"cuda_graphs=True needs inductor's graph partition and the cudagraph_unsafe op tag, which "
                          f"torch {torch.__version__} lacks: upgrade torch, or leave cuda_graphs off")
    return {**settings, **CUDA_GRAPH_SETTINGS}


def restride_saved_tensors(gm: fx.GraphModule, example_inputs):
    """Saved activations whose strides came back from the compiled forward as numbers for this batch
    size (a permuted layout: (6, 3, 18, 1) for sizes (B, 2, 5, 3) at B = 3) get the same dim order
    with strides that follow the symbolic sizes; reshaping them in the rewrite would otherwise fix B."""
    fixed = list(example_inputs)
    for i, (node, value) in enumerate(zip(gm.graph.find_nodes(op="placeholder"), example_inputs)):
        if not isinstance(value, torch.Tensor) or not any(isinstance(s, torch.SymInt) for s in value.shape):
            continue
        if any(isinstance(s, torch.SymInt) for s in value.stride()):
            continue
        order = sorted(range(value.dim()), key=lambda d: (value.stride()[d], -d))  # innermost first
        strides, step = [0] * value.dim(), 1
        for d in order:
            strides[d], step = step, step * value.shape[d]
        hints = [int(s.node.hint) if isinstance(s, torch.SymInt) else s for s in strides]
        if hints != list(value.stride()) or all(not isinstance(s, torch.SymInt) for s in strides):
            continue
        with detect_fake_mode([value]):
            fixed[i] = torch.empty_strided(value.shape, strides, dtype=value.dtype, device=value.device)
        node.meta["val"] = fixed[i]
    return fixed


MODULE_STATE = re.compile(r"\._(?:parameters|buffers|modules)\[")


def _root(source) -> object:
    """The source a Dynamo source is reached from (L['x'] for L['x']['a'][0])."""
    while getattr(source, "base", None) is not None:
        source = source.base
    return source


def _source_of(node: fx.Node):
    grapharg = node.meta.get("grapharg")
    return getattr(grapharg, "source", None)


def _name(source) -> str:
    name = source.name
    return str(name() if callable(name) else name)


def batch_outputs(gm: fx.GraphModule, user_inputs: tuple[int, ...]) -> list[int]:
    """The positions of Dynamo's graph outputs whose values are computed from the call's tensor arguments (the batch):
    those Dynamo returns to the caller, and those it stores as side effects (an attribute or buffer rebound to an
    activation, a list appended to), which the graph alone does not tell apart."""
    placeholders = list(gm.graph.find_nodes(op="placeholder"))
    from_batch = {placeholders[i] for i in user_inputs if i < len(placeholders)}
    for node in gm.graph.nodes:
        if node.op not in ("placeholder", "output") and any(a in from_batch for a in node.all_input_nodes):
            from_batch.add(node)
    (outputs,) = gm.graph.find_nodes(op="output")
    values = outputs.args[0] if isinstance(outputs.args[0], (tuple, list)) else (outputs.args[0],)
    return [i for i, v in enumerate(values) if v in from_batch]


def stored_batch_values(model: torch.nn.Module, outputs: list, returned, inputs: list) -> None:
    """Raise SampleMixingError if a value computed from the batch was kept by the forward other than in what it
    returned (`self.bank = features.detach()`, a buffer rebound, `self.history.append(h)`): it would carry these
    samples into later batches' gradients and into the saved model, unclipped and without noise. Checked at a
    capture's first call: Dynamo's code stores the same outputs at every call. The call's own tensor arguments
    (`self.last = x`) are looked for in the model too."""
    given = {id(t) for t in tree_leaves(returned) if isinstance(t, torch.Tensor)}
    kept = {id(t) for t in (ref() for ref in outputs) if t is not None}
    samples = kept | {id(t) for t in inputs}
    names = [name for name, value in model_state_tensors(model) if id(value) in samples]
    stray = kept - given
    if not names and not stray:
        return
    where = f"as {', '.join(names)}" if names else "outside what it returns (a global, or an object it holds)"
    raise SampleMixingError(
        f"the model's forward keeps a value computed from the batch {where}, so later batches' gradients and the "
        "saved model would carry these samples' values, unclipped and without noise (a memory bank, a cache of the "
        "last activations). Keep such state out of the DP model: return the value and let the training loop decide "
        "what to keep (nothing computed from private samples may be kept without noise).")


def model_state_tensors(model: torch.nn.Module):
    """(name, tensor) for the tensors a model holds in its modules' attributes: buffers, tensor attributes and the
    tensors in their lists, tuples and dicts (not parameters: the forward cannot rebind them in a captured graph)."""
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        for attr, value in [*vars(module).items(), *module._buffers.items()]:
            if attr in ("_parameters", "_modules", "_buffers"):
                continue
            for t in tree_leaves(value) if isinstance(value, (list, tuple, dict)) else [value]:
                if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter):
                    yield f"'{prefix}{attr}'", t


def user_input_positions(placeholders: list[fx.Node], example_inputs) -> tuple[int, ...]:
    """Placeholders that are the user's tensor arguments (positional, keyword, items of dicts, lists
    and tuples passed in): rooted at a local of the call that is not the module, and no parameter."""
    sources = [_source_of(n) for n in placeholders]
    module_locals = {"self"} | {getattr(_root(s), "local_name", None) for s in sources
                                if s is not None and MODULE_STATE.search(_name(s))}
    return tuple(i for i, (s, v) in enumerate(zip(sources, example_inputs))
                 if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter) and s is not None
                 and type(_root(s)).__name__ == "LocalSource" and _root(s).local_name not in module_locals)


def refuse_trainable_non_parameters(placeholders: list[fx.Node], example_inputs, user_inputs: tuple[int, ...]) -> None:
    """A tensor the forward reads that requires grad but is no trainable parameter (a buffer registered with
    requires_grad=True, a tensor attribute or global, an output of a layer outside the model, a tensor swapped in
    by torch.func.functional_call) would get the batch's raw gradient from the DP backward, neither clipped nor
    noised: refused, by its name. (The user's own arguments are refused by the DP model's call.)"""
    def readable(node: fx.Node) -> str:  # 'layer.s' for module state, the source itself otherwise
        source = _name(_source_of(node)) if _source_of(node) is not None else node.name
        parts = re.findall(r"_(?:modules|parameters|buffers)\['([^']+)'\]", source)
        return ".".join(parts) if MODULE_STATE.search(source) and parts else source
    found = [readable(node) for i, (node, value) in enumerate(zip(placeholders, example_inputs))
             if isinstance(value, torch.Tensor) and value.requires_grad and i not in user_inputs
             and not isinstance(value, torch.nn.Parameter)]
    if found:
        raise ConfigError(
            f"the model reads tensor(s) that require grad but are not its trainable parameters: {', '.join(found)}. "
            "Their gradients would leave the DP backward neither clipped nor noised. Make each one an nn.Parameter "
            "of the model passed to dpcompile (then it is clipped with the others), or detach it (a buffer: "
            "requires_grad=False; an output of a layer outside the model: put that layer inside the model)")


def unify_batch_sizes(placeholders: list[fx.Node], user_inputs: tuple[int, ...]) -> None:
    """Dim 0 of every user tensor argument is the batch: sizes that are equal now (as the DP model
    checks at every call) become one symbol, by a guard (a call where they differ recompiles, and is
    refused there). Without it, arguments the model never combines keep separate symbols."""
    sizes = []
    for i in user_inputs:
        value = placeholders[i].meta.get("example_value")
        if isinstance(value, torch.Tensor) and value.dim() > 0 and isinstance(value.shape[0], torch.SymInt):
            sizes.append(value.shape[0])
    hints = {getattr(s.node, "hint", None) for s in sizes}
    if len(sizes) > 1 and len(hints) == 1 and None not in hints:
        for size in sizes[1:]:
            torch._check(size == sizes[0])


def batch_symbol(placeholders: list[fx.Node], user_inputs: tuple[int, ...]):
    """Dim 0 of the user's tensor arguments: the one dynamic size they share (or, for a graph
    specialised to one batch size, the first one's)."""
    sizes = [(placeholders[i], passes.meta.shape_of_value(placeholders[i].meta["example_value"]))
             for i in user_inputs]
    sizes = [(node, shape[0]) for node, shape in sizes if shape]
    if not sizes:
        raise passes.meta.DPCompileError(
            "the model has no tensor argument with a batch dimension (parameters, buffers and constants never "
            "define the batch): pass the batch as a tensor argument whose dim 0 is the sample index")
    env = getattr(detect_fake_mode([n.meta["example_value"] for n, _ in sizes]), "shape_env", None)
    dynamic = {env.replace(size) if env is not None else size for _, size in sizes if size.free_symbols}
    if len(dynamic) > 1:
        names = ", ".join(f"{_name(_source_of(n))}: {s}" for n, s in sizes)
        raise passes.meta.DPCompileError(
            f"the tensor arguments disagree on the batch size (dim 0): {names}; every tensor argument of the call "
            "must hold the batch along dim 0")
    return next(iter(dynamic)) if dynamic else sizes[0][1]


def copy_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of a graph module (nodes, their meta and the module's meta shallow-copied: torch records some there that
    inductor reads, e.g. cudagraph_annotation), safe from the lowering's in-place passes; its code generated only
    where it runs (passes.emit.graph_module)."""
    copy = passes.emit.graph_module(gm, graph_copy(gm.graph), type(gm).__name__)
    copy.meta.update(gm.meta)
    return copy


def graph_copy(graph: fx.Graph) -> fx.Graph:
    """A graph's nodes and meta (shallow) in a new graph: 0.6-0.7 s for ResNet-50's 11.6k-node DP backward (64², this
    project's CPU, torch 2.13: fx's node copies)."""
    copy = fx.Graph()
    copy.output(copy.graph_copy(graph, {}))
    return copy


def split_bound(bound: float, groups: int) -> tuple[float, ...]:
    """R_g = R/√G for G clip groups, so the whole clipped gradient has norm at most R."""
    return within_bound(tuple(bound / groups**0.5 for _ in range(groups)), bound)


def within_bound(bounds: tuple[float, ...], total: float) -> tuple[float, ...]:
    """The group bounds, each lowered by a few units in the last place if need be, so that √(Σ R_g²) ≤ R exactly
    (in rationals): R/√G rounds up as often as down, and the settings accept bounds whose total is up to 1e-9 above
    R as equal (one sample then reached R·(1 + 9e-10))."""
    from fractions import Fraction
    bounds, limit = list(bounds), Fraction(total) ** 2
    if sum(Fraction(b) ** 2 for b in bounds) > limit:  # scaled to about R first, then down by ulps
        scale = total / math.sqrt(math.fsum(b * b for b in bounds))
        bounds = [b * scale for b in bounds]
    while sum(Fraction(b) ** 2 for b in bounds) > limit:
        bounds = [math.nextafter(b, 0.0) if b > 0 else b for b in bounds]
    return tuple(bounds)


def source_name(node: fx.Node) -> str:
    """A parameter's dotted name from Dynamo's source, e.g. L['self']._modules['fc']._parameters['weight']."""
    source = node.meta.get("grapharg").source.name if node.meta.get("grapharg") else node.name
    source = source() if callable(source) else source
    parts = re.findall(r"_(?:modules|parameters)\['([^']+)'\]", str(source))
    return ".".join(parts) or node.name


MATRIX_PRODUCTS = {aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default}


def has_half_products(gm: fx.GraphModule) -> bool:
    """Whether the graph multiplies bf16/fp16 matrices (cuBLAS's reduced-precision reductions would apply; the
    Grams of dpcompile::half_bmm return fp32, and count too)."""
    def half(n: fx.Node) -> bool:
        if n.target is torch.ops.dpcompile.half_bmm.default:
            return True
        return n.target in MATRIX_PRODUCTS and getattr(n.meta.get("val"), "dtype", None) in (torch.bfloat16,
                                                                                             torch.float16)
    return any(n.op == "call_function" and half(n) for n in gm.graph.nodes)


@torch._dynamo.disable
def refuse_compiled_autograd(grad_outputs=None) -> None:
    """ConfigError if compiled autograd is tracing or running this backward: it runs the backward graph as
    AOTAutograd captured it, not the DP rewrite (no clipping, no noise). A pre-hook of the DP backward's node."""
    ca = torch._dynamo.compiled_autograd
    if getattr(ca, "compiled_autograd_enabled", False) or getattr(ca, "in_compiled_autograd_region", False):
        raise ConfigError("compiled autograd (torch._dynamo.config.compiled_autograd or "
                          "torch._dynamo.compiled_autograd.enable) would run the model's captured backward instead "
                          "of the DP one (no clipping, no noise): run the DP model's backward with compiled "
                          "autograd off (the DP backward is compiled already)")


def guarding_releases(compiled: Callable, backend: DPBackend, params: tuple[passes.ParamSpec, ...]) -> Callable:
    """compiled (a standalone backend's), whose outputs' backward nodes refuse compiled autograd and note what the DP
    backward releases for the release guards (a DP model's forward does both: precise_during, guard.watch_release).
    A parameter replaced since the capture (model.fc.weight = nn.Parameter(...)) is read by the graph as its input,
    and clipped with the others, without a new capture: it is tracked at the call that first passes it."""
    boxed = getattr(compiled, "_boxed_call", False)
    last: list[tuple[int, ...]] = [()]

    def run(*args):
        inputs = args[0] if len(args) == 1 and isinstance(args[0], list) else args  # boxed: one list, emptied
        ids = tuple(id(inputs[spec.output_index]) for spec in params)
        if ids != last[0]:
            new = [(spec.name, p) for spec in params
                   if not ((state := guard.state_of(p := inputs[spec.output_index])) is not None
                           and state.guarded_by(backend.privacy))]
            if new:
                backend.privacy.track(new)
                backend.tracked.update(id(p) for _, p in new)
            last[0] = ids
        outs = compiled(*args)
        nodes = {id(t.grad_fn): t.grad_fn for t in outs if isinstance(t, torch.Tensor) and t.grad_fn is not None}
        for node in nodes.values():
            node.register_prehook(refuse_compiled_autograd)
        guard.watch_release(outs)
        return outs
    run._boxed_call = boxed
    return run


def precise_during(node) -> None:
    """The DP backward's autograd node runs (eager or inductor kernels) under precision.set_precise(), the
    user's settings restored after it; never under compiled autograd."""
    saved: list[dict] = []

    @torch._dynamo.disable  # run as written, never traced (a backward inside a user's torch.compile'd code)
    def before(grad_outputs):
        refuse_compiled_autograd()
        saved.append(set_precise())

    @torch._dynamo.disable
    def after(grad_inputs, grad_outputs):
        restore(saved.pop())

    node.register_prehook(before)
    node.register_hook(after)


def fp32_boxed(compiled):
    """A boxed compiled backward whose matrix products run without TF32."""
    def run(args):
        with precise_products():
            return compiled(args)
    run._boxed_call = True
    return run


PRIVACY_SETTINGS = ("sample_rate", "accountant", "gradient_accumulation_steps", "target_delta", "data_loader")


def refuse_partial_capture() -> None:
    """torch.compile(..., backend=dpcompile.backend(...)) without fullgraph=True: Dynamo may split the model at a graph
    break and run the code between the graphs as Python, where no check sees it (a batch mean applied there moved a
    release by 16R at B = 64), and one model in several graphs is not clipped as one. Refused for every capture made
    without fullgraph (Dynamo's translator says: `one_graph`), with or without a break."""
    from torch._dynamo.symbolic_convert import InstructionTranslator
    tx = getattr(InstructionTranslator, "current_tx", lambda: None)()
    if tx is not None and not getattr(tx, "one_graph", True):
        raise ConfigError(
            "torch.compile(model, backend=dpcompile.backend(...)) needs fullgraph=True: without it Dynamo may split "
            "the model into several graphs and run the code between them uncaptured, where nothing checks that samples "
            "stay apart, and the clip factor needs every layer's norm in one graph. Pass fullgraph=True (a model that "
            "does not capture as one graph cannot be made private), or use dpcompile.dpcompile(model, ...)")


def backend(**settings) -> DPBackend:
    """A torch.compile backend for DP-SGD: torch.compile(model, backend=backend(...), fullgraph=True).
    Its privacy state (ε, steps, noise, accumulation) is `.privacy`, a PrivacyEngine."""
    privacy = {k: settings.pop(k) for k in PRIVACY_SETTINGS if k in settings}
    config = DPConfig(**settings)
    if config.augmentation_multiplicity != 1:
        raise ConfigError("augmentation_multiplicity is a setting of dpcompile.dpcompile(), which flattens the "
                          "(B, K, ...) arguments inside the capture; dpcompile.backend() takes the batch as the model "
                          "sees it")
    return DPBackend(config, privacy=PrivacyEngine(config, **privacy))
