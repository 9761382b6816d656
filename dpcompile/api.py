"""dpcompile(model, ...): the model, compiled so that loss.backward() leaves DP-SGD gradients in .grad."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from .backend import INPUT_REQUIRES_GRAD, DPBackend, precise_during, stored_batch_values
from .config import DPConfig
from torch.fx.experimental.symbolic_shapes import ConstraintViolationError

from .errors import ConfigError, DPCompileError, GraphBreakError, ReleaseError, SampleMixingError, UnsupportedOpError
from .passes.safety import refuse_unsupported_modules
from .privacy import guard
from .privacy.engine import (COPY_MESSAGE, PrivacyEngine, dataset_size, poisson_sampler_of, resolve_noise,
                             sample_rate_of)
from .report import PlanReport, plan_report


class DPModel(nn.Module):
    """Runs the model through the DP backend; shares its parameters and its state_dict keys.

    `state_dict()` is the model's. The privacy state is `dp_model.privacy` (a PrivacyEngine, its one
    owner): `privacy.epsilon(delta)`, `.steps`, `.noise_multiplier`, `.sample_rate`, `.dropped_samples`,
    `.accumulating()`, `.drop_accumulated()`, and `privacy.state_dict()` / `load_state_dict()`
    (settings fingerprint, accountant history, step count, noise generator state, Poisson sampler
    position, dropped samples) to checkpoint next to the model's. While the DP model lives, an
    optimizer step over its parameters must apply exactly one noisy release (ReleaseError otherwise).
    The batch is dim 0 of the call's tensor arguments (positional, keyword, nested), which must agree.
    With augmentation_multiplicity=K every tensor argument is (B, K, ...): the model runs on its (B·K, ...)
    rows (sample b's views are rows b·K … b·K+K−1), each output whose dim 0 is B·K comes back as
    (B, K, ...), and a sample's K views are clipped together as one sample.
    A DPModel is not copied or pickled: save both state_dict()s instead.
    """

    def __init__(self, model: nn.Module, config: DPConfig, **privacy) -> None:
        super().__init__()
        refuse_unsupported_modules(model)
        refuse_lazy_parameters(model)
        self.module = model
        self.config = config
        self.privacy = PrivacyEngine(config, **privacy)  # the one owner of the privacy state
        _MODELS_MADE[0] += 1
        self.privacy.track((n, p) for n, p in model.named_parameters() if p.requires_grad)
        weakref.finalize(self, self.privacy.untrack)  # Dynamo's backend cache outlives us; the guard must not
        self.backend = DPBackend(config, {id(p): n for n, p in model.named_parameters()}, self.privacy,
                                 tracked={id(p) for p in model.parameters() if p.requires_grad})  # later: at capture
        views = config.augmentation_multiplicity
        target = model if views == 1 else views_flattened(model, views)  # flattened in the capture: dim 0 is K·B
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_compiled", torch.compile(target, backend=self.backend, fullgraph=True, dynamic=False))
        self._trainable = self._trainable_now()
        self._output_batch_dims = _NOT_FOUND_YET  # the outputs' batch dims, found at the first padded call
        self._padding_of: int | None = None  # inside a padded call: the batch's own size
        guard.watch_model(self)  # a parameter replaced since, used before the next call, is still the model's

    @torch._dynamo.disable  # inside a user's torch.compile'd code: run as written, its own compiled model inside
    def forward(self, *args, **kwargs):
        if torch.compiler.is_exporting():  # an exported program has no backward: the wrapped model's forward
            warnings.warn("dpcompile: torch.export of a DP model exports the model it wraps, for inference; an "
                          "exported program has no backward, so training it would not be private", UserWarning,
                          stacklevel=2)
            return self.module(*args, **kwargs)
        refuse_functorch_transforms()
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        views = self.config.augmentation_multiplicity
        if views > 1:
            check_views(leaves, views)
        batch = batch_size(leaves)
        if torch.is_grad_enabled():  # a 'mean' loss without a fixed n: the noise-only releases' divisor
            self.privacy.note_batch(batch)
        refuse_float16_autocast(leaves)
        # an empty (Poisson) batch: one all-zero sample carries the noise-only step; batch_bucket: all-zero samples up
        # to a multiple of the bucket
        bucket = self.config.batch_bucket or 1
        padded = max(1, -(-batch // bucket) * bucket)
        if padded != batch:
            return self._padded(args, kwargs, batch, padded)
        self._recapture_if_trainable_changed()
        try:
            # backed_size_oblivious: batch sizes 0 and 1 share the graph
            with fx_config.patch(backed_size_oblivious=True), _recompile_limit(64 + 8 * _MODELS_MADE[0]), \
                    batch_marked_dynamic(leaves):
                out = self._compiled(*args, **kwargs)
        except ConstraintViolationError as exc:
            raise ConfigError(
                f"the model fixes a size that holds the batch: dim 0 of every tensor argument of the DP model is the "
                f"batch, whose size changes from call to call, but the model makes it a constant ({_violations(exc)}). "
                "If the argument is per-sample, make the model work for any batch size (no reshape to a fixed batch: "
                "x.flatten(1), x.view(x.shape[0], -1)); if it is shared by all samples (a mask, a table, weights) and "
                "its dim 0 only happens to equal the batch size, it belongs in the model as a buffer "
                "(module.register_buffer) or parameter, not in the call") from None
        except torch._dynamo.exc.TorchRuntimeError as exc:  # an op that fails on these inputs while Dynamo traces
            text = str(exc)
            found = re.search(r"got (\w+)\((['\"])(.*?)\2\)", text, re.S)
            detail = f"{found[1]}: {found[3]}" if found else text.splitlines()[0] if text else repr(exc)
            raise DPCompileError(
                f"the model fails on this batch as it is ({detail}), before "
                "anything private happens: the same call without dpcompile fails too. Fix the model or its inputs "
                "(dtypes, devices, shapes)") from exc
        except torch._dynamo.exc.InternalTorchDynamoError as exc:  # torch's tracer failed on the model's code
            if self.backend.error is not None:
                raise self.backend.take_error() from exc
            raise DPCompileError(
                f"torch.compile's tracer (Dynamo) failed inside torch while capturing the model, so dpcompile cannot "
                f"see the whole forward and cannot make it private:\n{_dynamo_where(exc)}\nRewrite the line it names "
                "(an in-place write into a slice as an out-of-place op, for instance), or try another torch version; "
                "the error is torch's: please report it to PyTorch with this trace") from exc
        except torch._dynamo.exc.FailOnRecompileLimitHit as exc:
            raise DPCompileError(
                f"the model was captured again for every call until torch.compile's limit "
                f"({self.backend.compilations} captures): something the capture fixes changes from call to call, "
                "other than the batch size. A tensor the model reads that is not an argument of the call (an "
                "attribute set before the call, a tensor inside an object passed in) is taken as a constant of its "
                "size: pass per-sample data as tensor arguments (dim 0 the batch), and keep shared tensors as "
                "buffers or parameters") from exc
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as exc:  # UserError: an index or
            where = _dynamo_where(exc)  # size read from data (torch 2.13; 2.11 breaks the graph there)
            raise GraphBreakError(
                f"the model does not capture as one graph. The clip factor needs every layer's norm, so the "
                f"forward must be one graph: remove the data-dependent Python control flow or unsupported call "
                f"that Dynamo names here:\n{where}") from exc
        except Exception as exc:
            error = self.backend.take_error() if self.backend.error is not None else exc
            if isinstance(error, (SampleMixingError, UnsupportedOpError)) and _shared_candidates(leaves):
                raise _with_note(error, SHARED_NOTE) from exc
            if error is not exc:
                raise error from exc
            raise
        if self.backend.error is not None:
            raise self.backend.take_error()
        if self.backend.first_outputs is not None:  # a new capture's first call: nothing of the batch kept
            outputs, self.backend.first_outputs = self.backend.first_outputs, None
            stored_batch_values(self.module, outputs, out, leaves)
        rows = batch if self._padding_of is None else self._padding_of  # the samples, padding left out
        for node in guard.watch_release(out):  # its backward's releases must reach .grad unmixed
            precise_during(node)  # and its matrix products stay within the bounds' error terms
            rows_at_backward(node, self.privacy, rows)  # and hold no more samples than the loader's batch
        return out if views == 1 else views_unflattened(out, batch, views)

    def _padded(self, args, kwargs, batch: int, padded: int):
        """The call on `padded` rows, the batch's and padded − batch all-zero samples, its outputs cut back to the
        batch's rows along their batch dims (found at the first padded call; dim 0 where they are unknown). An
        all-zero sample holds no sample's data and its outputs are cut off, so its output gradient, and with it its
        clipped gradient, is zero (NaN where the model cannot compute a zero sample: then it is dropped, and counted
        in dropped_samples): it adds nothing to the release (an empty batch's release is noise only). The DP
        backward sees `padded` rows and undoes a 'mean' loss's 1/padded, where the loss (over the batch's outputs)
        took 1/batch: the outputs' gradients are scaled by batch/padded on the way back, so each sample's clipped
        gradient is its own loss's."""
        args, kwargs = tree_map(lambda t: _pad_rows(t, padded), (args, kwargs))
        if self._output_batch_dims is _NOT_FOUND_YET:
            self._output_batch_dims = self._batch_dims_of_outputs(args, kwargs)
        outermost = self._padding_of is None  # (an empty batch is padded to one sample, that one to the bucket)
        if outermost:
            self._padding_of = batch
        try:
            out = self.forward(*args, **kwargs)
        finally:
            if outermost:
                self._padding_of = None
        scale = batch / padded if self.config.loss_reduction == "mean" else None
        try:
            return tree_map(lambda t, d: _rows_of_batch(t, d, batch, padded, scale), out, self._output_batch_dims)
        except (ValueError, TypeError):  # output structures differ (unknown dims): dim 0
            return tree_map(lambda t: _rows_of_batch(t, None, batch, padded, scale), out)

    def _trainable_now(self) -> tuple[tuple[torch.Tensor, bool], ...]:
        return tuple((p, p.requires_grad) for p in self.module.parameters())

    def _recapture_if_trainable_changed(self) -> None:
        """A parameter frozen, unfrozen or replaced (model.fc.weight = nn.Parameter(...), load_state_dict with
        assign=True) since the last call: a new capture (whose norms cover exactly the trainable parameters, and
        which tracks new ones for the release guards) through a fresh backend, as torch before 2.13 does not guard
        requires_grad and Dynamo reads parameters as inputs. (The tuple holds the parameters it compares against,
        so a new one cannot take an old one's id.)"""
        now = self._trainable_now()
        if len(now) == len(self._trainable) and all(p is q and a == b for (p, a), (q, b) in zip(now, self._trainable)):
            return
        old = self.backend
        self.backend = DPBackend(self.config, old.param_names, self.privacy, tracked=old.tracked)
        self.backend.compilations = old.compilations
        object.__setattr__(self, "_compiled", torch.compile(self._target, backend=self.backend, fullgraph=True,
                                                            dynamic=False))
        self._trainable = now

    def _batch_dims_of_outputs(self, args, kwargs):
        """For each output leaf, the dims whose size follows the batch (found on fake tensors, the call's first
        sample expanded to batch sizes 2 and 3; None where that fails: then dim 0), so an empty batch's output is
        empty there (a sequence-first output (T, 0, p), not (0, 1, p)), and a padded one is cut there."""
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.func import functional_call
        try:
            outs = []
            for size in (2, 3):
                mode = FakeTensorMode(allow_non_fake_inputs=True)
                fake = lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t  # noqa: E731
                # the model's own parameters and buffers as fakes too: an in-place update in forward stays there
                state = {n: fake(t) for n, t in [*self.module.named_parameters(), *self.module.named_buffers()]}
                a, k = tree_map(fake, (args, kwargs))
                views = self.config.augmentation_multiplicity
                with mode, torch.no_grad():
                    a, k = tree_map(lambda t: t[:1].expand(size, *t.shape[1:]) if isinstance(t, torch.Tensor)
                                    and t.dim() > 0 else t, (a, k))
                    out = functional_call(self.module, state, *flatten_views(a, k, views))
                    outs.append(views_unflattened(out, size, views))
            return tree_map(lambda u, v: tuple(d for d in range(u.dim()) if u.shape[d] != v.shape[d])
                            if isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.dim() == v.dim()
                            else None, outs[0], outs[1])
        except Exception:  # the model does not run on fake tensors: dim 0
            return None

    @property
    def graphs(self) -> dict[str, fx.GraphModule]:
        """Captured forward, backward before and after rewriting (after the first forward call)."""
        return self.backend.graphs

    @property
    def compilations(self) -> int:
        """How many times the model was captured (recompiles included)."""
        return self.backend.compilations

    def explain(self) -> PlanReport:
        """The per-layer plan: sizes, both methods' costs, the decision and why."""
        if "backward_rewritten" not in self.graphs:
            raise DPCompileError("the plan is made at the first forward call: run one batch through the DP model "
                                 "first, then call explain()")
        return plan_report(self.graphs["backward"])  # the annotated graph: the rewritten one holds no analyses

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def __reduce_ex__(self, protocol):
        raise DPCompileError(COPY_MESSAGE)

    def __deepcopy__(self, memo):
        raise DPCompileError(COPY_MESSAGE)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def keeps_graph() -> bool:
    """The running backward keeps its graph (retain_graph=True, or create_graph=True)."""
    ask = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return bool(ask()) if ask is not None else False


def rows_at_backward(node, engine: PrivacyEngine, rows: int) -> None:
    """When the DP backward of a forward on `rows` samples starts (a pre-hook on its autograd node), the engine
    notes them: a logical step's backwards may hold no more samples than the loader's batch (check_rows). A second
    backward through the same forward (retain_graph=True, with torch's donated buffers turned off as its error
    suggests) is refused: it would release the same batch again, which the accountant would count as another
    independently sampled step."""
    ran = [False]

    @torch._dynamo.disable  # run as written, never traced
    def before(grad_outputs):
        if torch._functorch.config.donated_buffer and keeps_graph():
            raise ConfigError(
                "backward(retain_graph=True) or create_graph=True through the DP model: its compiled backward frees "
                "its saved buffers as it runs (torch's donated buffers), and a second backward through the same "
                "forward would release the same batch again. Run the DP model's forward again for each backward; a "
                "gradient penalty on the DP model's parameters is not supported")
        if ran[0]:
            raise ReleaseError(
                "a second backward through the same forward of the DP model (backward(retain_graph=True), or "
                "torch.autograd.grad(..., retain_graph=True) and then another backward): it would release the same "
                "batch again, which the accountant would count as another independently sampled step. Run the DP "
                "model's forward again for each backward (one backward and one optimizer step per batch)")
        ran[0] = True
        engine.note_rows(rows)
    node.register_prehook(before)


def refuse_float16_autocast(leaves) -> None:
    """float16 autocast needs a GradScaler, whose loss scale S reaches the clip factor: samples would be
    clipped to R/S and noised with σR/S once unscaled (private, but nothing learns). bf16 needs no scaler."""
    for device_type in {t.device.type for t in leaves}:
        if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16:
            raise ConfigError(
                "float16 autocast is not supported: it needs a GradScaler, and the scaler's loss scale S multiplies "
                "every per-sample gradient before clipping, so after unscaling each sample would count R/S and the "
                "noise σR/S (private, but the model would not learn). Use bfloat16 autocast "
                f"(torch.autocast('{device_type}', dtype=torch.bfloat16)), which needs no scaler, or float32")


def dpcompile(model: nn.Module, *, max_grad_norm: float, noise_multiplier: float | None = None,
              target_epsilon: float | None = None, target_delta: float | None = None, epochs: float | None = None,
              steps: int | None = None, sample_rate: float | None = None, data_loader: Any = None,
              accountant: str = "pld", gradient_accumulation_steps: int = 1, loss_reduction: str = "mean",
              expected_batch_size: int | None = None, clipping: str = "abadi",
              clip_groups: str | Sequence[Sequence[str]] = "flat", clip_group_norms: Sequence[float] | None = None,
              secure_noise: bool = False, policy: str = "auto", backend: str = "inductor", seed: int | None = None,
              augmentation_multiplicity: int = 1, **options) -> DPModel:
    """Compile model for DP-SGD: after loss.backward(), .grad = (Σ_i C_i g_i + N(0, σ²R²)) / n.

    σ is noise_multiplier, or calibrated from target_epsilon at target_delta for `steps` (or `epochs`)
    logical steps at sample_rate q (or data_loader's, a poisson_loader). n = expected_batch_size for
    'mean' (default round(q·N) when data_loader gives N), 1 for 'sum'. With
    gradient_accumulation_steps=k, noise is added (and a step counted) on every k-th backward only;
    with Poisson batches split each one into k micro-batches (`batch.tensor_split(k)`, empty ones
    included). clip_groups: 'flat', 'per_layer' (one group per module) or lists of parameter names;
    group g is clipped to R_g (clip_group_norms, default R/√G). augmentation_multiplicity=K: every tensor
    argument is (B, K, ...), K augmented views per sample, clipped together as one sample (De et al. 2022);
    the model runs on the (B·K, ...) rows, outputs of dim 0 B·K come back as (B, K, ...). `options`: other
    DPConfig fields.
    """
    config_fields = {f.name for f in dataclasses.fields(DPConfig)} - {"param_names"}
    unknown = sorted(set(options) - config_fields)
    if unknown:
        settings = sorted(config_fields | set(PRIVACY_ARGUMENTS))
        raise ConfigError(f"unknown setting(s) {unknown}; dpcompile() takes {settings}")
    sampler = poisson_sampler_of(data_loader)
    sample_rate = sample_rate_of(sample_rate, sampler)
    n = dataset_size(data_loader, sampler)
    if expected_batch_size is None and loss_reduction == "mean" and sample_rate is not None and n is not None:
        expected_batch_size = max(1, round(sample_rate * n))
    config = DPConfig(max_grad_norm=max_grad_norm, noise_multiplier=0.0 if noise_multiplier is None else noise_multiplier,
                      loss_reduction=loss_reduction, expected_batch_size=expected_batch_size, policy=policy,
                      backend=backend, seed=seed, clipping=clipping, secure_noise=secure_noise,
                      clip_groups=clip_groups_of(model, clip_groups),
                      augmentation_multiplicity=augmentation_multiplicity,
                      clip_group_norms=tuple(clip_group_norms) if clip_group_norms is not None else None, **options)
    sigma, planned = resolve_noise(noise_multiplier=noise_multiplier, target_epsilon=target_epsilon,
                                   target_delta=target_delta, sample_rate=sample_rate, epochs=epochs, steps=steps,
                                   accountant=accountant)
    config = dataclasses.replace(config, noise_multiplier=sigma)
    return DPModel(model, config, sample_rate=sample_rate, accountant=accountant, target_delta=target_delta,
                   gradient_accumulation_steps=gradient_accumulation_steps, planned_steps=planned,
                   data_loader=sampler)  # the engine checks accumulation and the normaliser


PRIVACY_ARGUMENTS = ("target_epsilon", "target_delta", "epochs", "steps", "sample_rate", "data_loader", "accountant",
                     "gradient_accumulation_steps")


def clip_groups_of(model: nn.Module, spec: str | Sequence[Sequence[str]] | None) -> tuple[tuple[str, ...], ...] | None:
    """'flat' -> None (one group); 'per_layer' -> trainable parameters grouped by module; names checked."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if spec is None or spec == "flat":
        return None
    if spec == "per_layer":
        groups: dict[str, list[str]] = {}
        for name in trainable:
            groups.setdefault(name.rpartition(".")[0], []).append(name)
        return tuple(tuple(g) for g in groups.values())
    if isinstance(spec, str):
        raise ConfigError(f"clip_groups must be 'flat', 'per_layer' or lists of parameter names, got {spec!r}")
    groups_t = tuple(tuple(g) for g in spec)
    listed = {n for g in groups_t for n in g}
    unknown = listed - {n for n, _ in model.named_parameters()}
    canonical = {id(p): n for n, p in model.named_parameters()}
    aliases = {n: canonical[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if n in unknown}
    if aliases:  # a tied parameter named by its second path
        raise ConfigError("clip_groups name a tied parameter by another of its paths: "
                          + ", ".join(f"'{a}' is '{c}'" for a, c in sorted(aliases.items()))
                          + "; name it by the first path")
    if unknown:
        raise ConfigError(f"clip_groups name parameters the model does not have: {sorted(unknown)}")
    missing = [n for n in trainable if n not in listed]
    if missing:
        raise ConfigError(f"every trainable parameter must be in a clip group; missing: {missing}")
    return groups_t


def flatten_views(args, kwargs, views: int):
    """(args, kwargs) with every tensor argument (B, K, ...) as its (B·K, ...) rows (sample b's views are rows
    b·K … b·K+K−1); unchanged for K = 1."""
    if views == 1:
        return args, kwargs
    return tree_map(lambda t: t.flatten(0, 1) if isinstance(t, torch.Tensor) and t.dim() > 1 else t, (args, kwargs))


def views_flattened(model: nn.Module, views: int):
    """model on the (B·K, ...) rows of its (B, K, ...) arguments, as a function for torch.compile: the
    flattening is captured, so the graph sees dim 0 as K·B with B the batch symbol."""
    def forward(*args, **kwargs):
        args, kwargs = flatten_views(args, kwargs, views)
        return model(*args, **kwargs)
    return forward


def views_unflattened(out, batch: int, views: int):
    """Each output tensor whose dim 0 is B·K as (B, K, ...); unchanged for K = 1."""
    if views == 1:
        return out
    return tree_map(lambda t: t.unflatten(0, (batch, views)) if isinstance(t, torch.Tensor) and t.dim() > 0
                    and t.shape[0] == batch * views else t, out)


def check_views(leaves: list[torch.Tensor], views: int) -> None:
    """Every tensor argument of dim ≥ 1 is (B, K, ...) for K = augmentation_multiplicity; else DPCompileError."""
    for t in leaves:
        if t.dim() > 0 and (t.dim() < 2 or t.shape[1] != views):
            raise DPCompileError(
                f"augmentation_multiplicity={views}: every tensor argument of the DP model must be (B, {views}, ...), "
                f"the B samples along dim 0 and each sample's {views} augmented views along dim 1 (torch.stack(views, "
                f"dim=1)), but one has shape {tuple(t.shape)}. Labels too: pass y as (B, {views}) (y.unsqueeze(1)"
                f".expand(-1, {views})) or keep them out of the call. The model runs on the (B·{views}, ...) rows, "
                f"sample b's views being rows b·{views} … b·{views}+{views - 1}")


_MODELS_MADE = [0]  # DP models made in this process: each adds cache entries to its class's forward code


def _recompile_limit(limit: int):
    """Room for many compiled models in one process (each adds cache entries to the same forward code, and a dead
    model's stay: a sweep's 65th DP model failed with Dynamo's FailOnRecompileLimitHit at a fixed 64)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: max(limit, getattr(config, name))})


def refuse_lazy_parameters(model: nn.Module) -> None:
    """A lazy layer's parameters (nn.LazyLinear before its first call) have no shape yet: they cannot be guarded or
    clipped (an internal ValueError came out of the release guards)."""
    lazy = [name for name, p in model.named_parameters() if nn.parameter.is_lazy(p)]
    if lazy:
        raise ConfigError(f"parameter(s) {lazy[:4]} are still uninitialised (a lazy layer, such as nn.LazyLinear): run "
                          "the model once on a batch of public or dummy data before dpcompile(model, ...), so that "
                          "every parameter has its shape")


# What torch._dynamo.mark_dynamic sets on a tensor (the names differ between torch versions).
DYNAMIC_MARKS = ("_dynamo_dynamic_indices", "_dynamo_dynamic_range", "_has_dynamo_dim_marking", "_specialize_on",
                 "_dynamo_hint_overrides")


@contextlib.contextmanager
def batch_marked_dynamic(leaves: list[torch.Tensor]):
    """Dim 0 of each tensor argument marked dynamic for the capture (only the batch dimension is dynamic), and the
    caller's tensors left as they were after it: a mark kept on them made the caller's own torch.compile of another
    function over the same batch fail (ConstraintViolationError)."""
    marked = [(t, {name: copy.copy(getattr(t, name)) for name in DYNAMIC_MARKS if hasattr(t, name)})
              for t in leaves if t.dim() > 0]
    for t, _ in marked:
        torch._dynamo.mark_dynamic(t, 0)
    try:
        yield
    finally:
        for t, before in marked:
            for name in DYNAMIC_MARKS:
                if name in before:
                    setattr(t, name, before[name])
                elif hasattr(t, name):
                    delattr(t, name)


def refuse_functorch_transforms() -> None:
    """A DP model called inside torch.func's transforms (vmap, grad, vjp, jacrev...): refused by name. (Dynamo's own
    refusal, "Unsupported functorch tracing attempt", read as a graph break of the model's.)"""
    if torch._C._functorch.peek_interpreter_stack() is not None:
        raise ConfigError(
            "the DP model was called inside a torch.func transform (vmap, grad, vjp, jacrev, ...): it computes, "
            "clips and noises every sample's gradient itself, in the backward of an ordinary call. Call it outside "
            "any transform and take the released gradient from loss.backward() (or torch.autograd.grad); for "
            "per-sample quantities of your own, transform the wrapped model (dp_model.module), outside the private "
            "step")


def _dynamo_where(exc: BaseException) -> str:
    """The first line of a Dynamo error, its explanation and hints, and the user code it was tracing ("from user
    code:" and on)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    user = next((i for i, line in enumerate(lines) if line.startswith("from user code")), len(lines))
    why = [line for line in lines[1:user] if line.strip().startswith(("Explanation:", "Hint:"))][:3]
    return "\n".join(lines[:1] + why + lines[user:user + 12])


_NOT_FOUND_YET = object()  # DPModel._output_batch_dims before the first padded call (None: found unknown)


def _pad_rows(value, rows: int):
    """A batch tensor (dim ≥ 1) with all-zero samples appended up to `rows` (an empty batch, batch_bucket)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] < rows:
        return torch.cat([value, value.new_zeros((rows - value.shape[0], *value.shape[1:]))])
    return value


def _rows_of_batch(t, dims, batch: int, padded: int, scale: float | None):
    """An output of the padded call cut back to the batch's rows along its batch dims (where they are unknown: dim 0
    if it has `padded` rows); with a scale, its gradient scaled by it on the way back."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return t
    along = dims if isinstance(dims, tuple) else (0,) if t.shape[0] == padded else ()
    for d in along:
        t = t.narrow(d, 0, batch)
    if along and scale is not None and t.requires_grad:
        t.register_hook(lambda g: g * scale)
    return t


SHARED_NOTE = (" Every tensor argument of the call is taken as per-sample along dim 0: a tensor shared by all samples "
               "(a mask, a table, weights) whose dim 0 only happens to equal the batch size belongs in the model as a "
               "buffer (module.register_buffer) or parameter, not in the call.")


def _shared_candidates(leaves: list[torch.Tensor]) -> bool:
    """Whether the call has several tensor arguments with a dim 0 (one of them may not be per-sample)."""
    return sum(1 for t in leaves if t.dim() > 0) > 1


def _with_note(error: DPCompileError, note: str) -> DPCompileError:
    message = str(error.args[0]) if error.args else str(error)
    return type(error)(message.rstrip() + note)


def _violations(exc: ConstraintViolationError) -> str:
    """Dynamo's 'L['w'].size()[0] ... specialized it to be a constant (2)' lines, shortened."""
    found = re.findall(r"(L\[[^\n]*?\]\.size\(\)\[\d+\])[^\n]*?constant \((\d+)\)", str(exc))
    if not found:
        return str(exc).splitlines()[0]
    return "; ".join(f"{src} fixed to {n}" for src, n in found)


def batch_size(leaves: list[torch.Tensor]) -> int:
    """B = dim 0 of every tensor argument of dim ≥ 1 (they must agree); inputs must not require grad."""
    sizes = {tuple(t.shape[:1]) for t in leaves if t.dim() > 0}
    if not sizes:
        raise ConfigError("the call has no tensor argument with a batch dimension: the samples are along dim 0 "
                          "of the model's tensor arguments (positional, keyword, or inside dicts/lists/tuples). Pass "
                          "a batch: for one sample x, call the model on x.unsqueeze(0) (a 0-dim x becomes shape (1,))")
    if len(sizes) > 1:
        raise ConfigError(f"the tensor arguments disagree on the batch size (dim 0): {sorted(s[0] for s in sizes)}. "
                          "Every tensor argument of the DP model is per-sample along dim 0; a tensor shared by all "
                          "samples (a mask, a position table, a codebook) belongs in the model as a buffer "
                          "(module.register_buffer) or parameter, not in the call")
    if torch.is_grad_enabled() and any(t.requires_grad for t in leaves):
        raise ConfigError(INPUT_REQUIRES_GRAD)
    return sizes.pop()[0]
