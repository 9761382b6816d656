"""dpcompile(model, ...): the model, compiled so that loss.backward() leaves DP-SGD gradients in .grad."""
from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from .backend import DPBackend
from .config import DPConfig
from .errors import ConfigError, DPCompileError, GraphBreakError
from .passes.safety import refuse_unsupported_modules
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
    A DPModel is not copied or pickled: save both state_dict()s instead.
    """

    def __init__(self, model: nn.Module, config: DPConfig, **privacy) -> None:
        super().__init__()
        refuse_unsupported_modules(model)
        self.module = model
        self.config = config
        self.privacy = PrivacyEngine(config, **privacy)  # the one owner of the privacy state
        self.privacy.track((n, p) for n, p in model.named_parameters() if p.requires_grad)
        weakref.finalize(self, self.privacy.untrack)  # Dynamo's backend cache outlives us; the guard must not
        self.backend = DPBackend(config, {id(p): n for n, p in model.named_parameters()}, self.privacy)
        object.__setattr__(self, "_compiled", torch.compile(model, backend=self.backend, fullgraph=True, dynamic=False))

    def forward(self, *args, **kwargs):
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        batch = batch_size(leaves)
        if torch.backends.cuda.matmul.allow_tf32 and any(t.is_cuda for t in leaves):
            raise ConfigError("per-sample norms are computed with matrix products, and TF32 would make them come out "
                              "low (so a sample could exceed the clipping bound): set "
                              "torch.backends.cuda.matmul.allow_tf32 = False (PyTorch's default), or "
                              "torch.set_float32_matmul_precision('highest').")
        if batch == 0:  # an empty (Poisson) batch: one all-zero sample carries the noise-only step
            args, kwargs = tree_map(_pad_empty_batch, (args, kwargs))
            return tree_map(lambda t: t[:0] if isinstance(t, torch.Tensor) and t.dim() > 0 else t,
                            self.forward(*args, **kwargs))
        for t in leaves:
            if t.dim() > 0:
                torch._dynamo.mark_dynamic(t, 0)  # only the batch dimension is dynamic
        try:
            with fx_config.patch(backed_size_oblivious=True), _recompile_limit(64):  # sizes 0 and 1 share the graph
                out = self._compiled(*args, **kwargs)
        except torch._dynamo.exc.Unsupported as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            user = next((i for i, line in enumerate(lines) if line.startswith("from user code")), len(lines))
            where = "\n".join(lines[:1] + lines[user:user + 12])
            raise GraphBreakError(
                f"the model does not capture as one graph. The clip factor needs every layer's norm, so the "
                f"forward must be one graph: remove the data-dependent Python control flow or unsupported call "
                f"that Dynamo names here:\n{where}") from exc
        except Exception as exc:
            if self.backend.error is not None:
                raise self.backend.error from exc
            raise
        if self.backend.error is not None:
            raise self.backend.error
        return out

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
            raise RuntimeError("the plan is made at the first forward call; run one batch first")
        return plan_report(self.graphs["backward_rewritten"])

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def __reduce_ex__(self, protocol):
        raise DPCompileError(COPY_MESSAGE)

    def __deepcopy__(self, memo):
        raise DPCompileError(COPY_MESSAGE)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def dpcompile(model: nn.Module, *, max_grad_norm: float, noise_multiplier: float | None = None,
              target_epsilon: float | None = None, target_delta: float | None = None, epochs: float | None = None,
              steps: int | None = None, sample_rate: float | None = None, data_loader: Any = None,
              accountant: str = "pld", gradient_accumulation_steps: int = 1, loss_reduction: str = "mean",
              expected_batch_size: int | None = None, clipping: str = "abadi",
              clip_groups: str | Sequence[Sequence[str]] = "flat", clip_group_norms: Sequence[float] | None = None,
              secure_noise: bool = False, policy: str = "mixed", backend: str = "inductor", seed: int | None = None,
              **options) -> DPModel:
    """Compile model for DP-SGD: after loss.backward(), .grad = (Σ_i C_i g_i + N(0, σ²R²)) / n.

    σ is noise_multiplier, or calibrated from target_epsilon at target_delta for `steps` (or `epochs`)
    logical steps at sample_rate q (or data_loader's, a poisson_loader). n = expected_batch_size for
    'mean' (default round(q·N) when data_loader gives N), 1 for 'sum'. With
    gradient_accumulation_steps=k, noise is added (and a step counted) on every k-th backward only;
    with Poisson batches split each one into k micro-batches (`batch.tensor_split(k)`, empty ones
    included). clip_groups: 'flat', 'per_layer' (one group per module) or lists of parameter names;
    group g is clipped to R_g (clip_group_norms, default R/√G). `options`: other DPConfig fields.
    """
    sampler = poisson_sampler_of(data_loader)
    sample_rate = sample_rate_of(sample_rate, sampler)
    n = dataset_size(data_loader, sampler)
    if expected_batch_size is None and loss_reduction == "mean" and sample_rate is not None and n is not None:
        expected_batch_size = max(1, round(sample_rate * n))
    config = DPConfig(max_grad_norm=max_grad_norm, noise_multiplier=0.0 if noise_multiplier is None else noise_multiplier,
                      loss_reduction=loss_reduction, expected_batch_size=expected_batch_size, policy=policy,
                      backend=backend, seed=seed, clipping=clipping, secure_noise=secure_noise,
                      clip_groups=clip_groups_of(model, clip_groups),
                      clip_group_norms=tuple(clip_group_norms) if clip_group_norms is not None else None, **options)
    sigma, planned = resolve_noise(noise_multiplier=noise_multiplier, target_epsilon=target_epsilon,
                                   target_delta=target_delta, sample_rate=sample_rate, epochs=epochs, steps=steps,
                                   accountant=accountant)
    config = dataclasses.replace(config, noise_multiplier=sigma)
    return DPModel(model, config, sample_rate=sample_rate, accountant=accountant, target_delta=target_delta,
                   gradient_accumulation_steps=gradient_accumulation_steps, planned_steps=planned,
                   data_loader=sampler)  # the engine checks accumulation and the normaliser


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
    if unknown:
        raise ConfigError(f"clip_groups name parameters the model does not have: {sorted(unknown)}")
    missing = [n for n in trainable if n not in listed]
    if missing:
        raise ConfigError(f"every trainable parameter must be in a clip group; missing: {missing}")
    return groups_t


def _recompile_limit(limit: int):
    """Room for many compiled models in one process (each adds cache entries to the same forward code)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: max(limit, getattr(config, name))})


def _pad_empty_batch(value):
    """An empty-batch tensor replaced by one zero sample; its output gradient, and so its clipped
    per-sample gradient, is zero, so the step adds noise only."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == 0:
        return value.new_zeros((1, *value.shape[1:]))
    return value


def batch_size(leaves: list[torch.Tensor]) -> int:
    """B = dim 0 of every tensor argument of dim ≥ 1 (they must agree); inputs must not require grad."""
    sizes = {tuple(t.shape[:1]) for t in leaves if t.dim() > 0}
    if not sizes:
        raise ConfigError("the call has no tensor argument with a batch dimension: the samples are along dim 0 "
                          "of the model's tensor arguments (positional, keyword, or inside dicts/lists/tuples)")
    if len(sizes) > 1:
        raise ConfigError(f"the tensor arguments disagree on the batch size (dim 0): {sorted(s[0] for s in sizes)}. "
                          "Every tensor argument of the DP model is per-sample along dim 0; a tensor shared by all "
                          "samples (a mask, a position table, a codebook) belongs in the model as a buffer "
                          "(module.register_buffer) or parameter, not in the call")
    if torch.is_grad_enabled() and any(t.requires_grad for t in leaves):
        raise ConfigError("an input of the DP model requires grad: a trainable layer in front of the DP model "
                          "would receive raw, unclipped per-sample gradients through it. Put the trainable layers "
                          "inside the model passed to dpcompile, or detach the input")
    return sizes.pop()[0]
