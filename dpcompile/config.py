"""The settings of one private training run, checked once, frozen."""
from __future__ import annotations

import math
import numbers
from collections import Counter
from dataclasses import dataclass, field

from .errors import ConfigError

POLICIES = ("mixed", "ghost", "per_sample", "auto")
BACKENDS = ("inductor", "eager")
REDUCTIONS = ("mean", "sum")
CLIPPING = ("abadi", "automatic")


# The largest clip factor automatic clipping may give (R / clip_stability, for a zero gradient): finite, with room,
# in float32 and bfloat16 (3.4e38), the dtype a term's factor is rounded to.
MAX_CLIP_FACTOR = 1e30
# Up to 2⁴⁰ samples clipped to R sum to at most 1.1e32 at this R, far from float32's and bfloat16's 3.4e38: an
# overflow to inf before the noise (a release finite or not by the batch) cannot happen there. (float16 gradients:
# README's limitations.)
MAX_GRAD_NORM_CAP = 1e20
# The least R (and clip group bound): the clip factor aims at R·(1 − 2⁻⁴⁰) in float64, a normal number from here down
# to R/√G for up to 2⁴² groups; below 2⁻¹⁰²² its roundings move values by η/2, not by u of themselves, and R's
# slack is lost (rewrite.clip_factor). Far below any bound in use (fp32's smallest subnormal is 1.4e-45).
MIN_GRAD_NORM = 2.0**-1000
# policy "auto": the share of the backward's saved tensors (activations, parameters, in bytes) its per-sample
# gradients may hold beyond the paper's plan ("mixed"); past it, the per-sample choices that save least time per byte
# go back to ghost clipping (passes.plan.cap_memory). Lower trades step time for memory. On an H100 (torch 2.11,
# 2026-12-07, benchmarks/NOTES.md, sixtieth session): ResNet-18 (GN) 224² b64 fp32 at 0.1 peaks at 1.28× non-private
# training (1.37× at 0.25) for 1.7% more device time; ViT-S/16 fp32 at 0.1 took 2.3% more and peaked 25 MiB lower.
AUTO_EXTRA_MEMORY = 0.25

@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings: grad = (Σ_i C_i·g_i + N(0, σ²R²I)) / n; g_i over sample i's K views."""

    max_grad_norm: float
    noise_multiplier: float
    loss_reduction: str = "mean"
    expected_batch_size: int | None = None
    policy: str = "auto"
    auto_extra_memory: float = AUTO_EXTRA_MEMORY  # policy "auto"'s memory cap (AUTO_EXTRA_MEMORY)
    backend: str = "inductor"
    seed: int | None = None
    secure_noise: bool = False
    clipping: str = "abadi"
    clip_stability: float = 0.01
    clip_groups: tuple[tuple[str, ...], ...] | None = None
    clip_group_norms: tuple[float, ...] | None = None
    augmentation_multiplicity: int = 1  # K augmented views per sample, clipped together (De et al. 2022)
    cuda_graphs: bool = False  # CUDA graphs for the DP graphs on CUDA, the noise op kept outside them
    # k: each batch padded with all-zero samples up to a multiple of k rows (the outputs cut back to the batch), so the
    # compiled graphs see a few sizes, not every Poisson batch size (CUDA graphs record once per size); None: as it is
    batch_bucket: int | None = None
    # TF32 tensor-core products (certified), True for matmuls and convolutions, False for neither, None (default): for
    # those whose fp32 products PyTorch's settings put on TF32 in the model's own training (precision.tf32_kinds)
    per_sample_tf32: bool | None = None  # instantiated per-sample gradients
    ghost_tf32: bool | None = None  # ghost-clipped layers' clipped sums and Gram norms
    param_names: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for name in ("max_grad_norm", "noise_multiplier", "clip_stability", "auto_extra_memory"):
            object.__setattr__(self, name, real_number(name, getattr(self, name)))
        if self.expected_batch_size is not None:
            object.__setattr__(self, "expected_batch_size", integer("expected_batch_size", self.expected_batch_size))
        k = integer("augmentation_multiplicity", self.augmentation_multiplicity)
        check(k >= 1, f"augmentation_multiplicity must be a positive integer (the augmented views per sample), got {k}")
        object.__setattr__(self, "augmentation_multiplicity", k)
        if self.batch_bucket is not None:
            bucket = integer("batch_bucket", self.batch_bucket)
            check(bucket >= 1, f"batch_bucket must be a positive integer (batches are padded to a multiple of it), "
                               f"got {bucket}")
            object.__setattr__(self, "batch_bucket", bucket)
        if self.seed is not None:
            seed = integer("seed", self.seed)
            check(0 <= seed < 2**63, f"seed must be an integer in [0, 2**63), got {seed}")
            object.__setattr__(self, "seed", seed)
        if self.clip_group_norms is not None:
            object.__setattr__(self, "clip_group_norms",
                               tuple(real_number("clip_group_norms", r) for r in self.clip_group_norms))
        check(self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm),
              f"max_grad_norm must be a positive finite number, got {self.max_grad_norm}")
        check(self.max_grad_norm >= MIN_GRAD_NORM,
              f"max_grad_norm must be at least 2**-1000 (about {MIN_GRAD_NORM:.2g}), got {self.max_grad_norm}: below it "
              "the clip factor's float64 arithmetic cannot keep a sample's contribution within it")
        check(self.max_grad_norm <= MAX_GRAD_NORM_CAP,
              f"max_grad_norm must be at most {MAX_GRAD_NORM_CAP:g}, got {self.max_grad_norm}: a batch's clipped "
              "sum, formed before the noise, must stay finite in float32 and bfloat16 (3.4e38) for any batch size")
        check(self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier),
              f"noise_multiplier must be >= 0 and finite, got {self.noise_multiplier}")
        check(self.loss_reduction in REDUCTIONS, f"loss_reduction must be one of {REDUCTIONS}, got {self.loss_reduction!r}")
        check(self.policy in POLICIES, f"policy must be one of {POLICIES}, got {self.policy!r}")
        check(self.auto_extra_memory >= 0 and math.isfinite(self.auto_extra_memory),
              f"auto_extra_memory must be a finite number >= 0 (a share of the saved tensors), got "
              f"{self.auto_extra_memory}")
        check(self.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check(isinstance(self.cuda_graphs, bool), f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        for name in ("per_sample_tf32", "ghost_tf32"):
            value = getattr(self, name)
            check(value is None or isinstance(value, bool),
                  f"{name} must be True, False or None (as PyTorch's TF32 settings have it), got {value!r}")
        check(not self.cuda_graphs or self.backend == "inductor",
              "cuda_graphs=True needs backend='inductor' (inductor records and replays the CUDA graphs)")
        check(self.clipping in CLIPPING, f"clipping must be one of {CLIPPING}, got {self.clipping!r}")
        check(self.clip_stability > 0, f"clip_stability must be > 0, got {self.clip_stability}")
        check(self.clipping != "automatic" or self.max_grad_norm / self.clip_stability <= MAX_CLIP_FACTOR,
              f"clip_stability={self.clip_stability:g} is too small for max_grad_norm={self.max_grad_norm:g}: automatic "
              f"clipping's factor R/(‖g‖ + clip_stability) reaches R/clip_stability for a zero gradient, which must "
              f"stay at most {MAX_CLIP_FACTOR:g} (finite in float32, where a zero gradient times an infinite factor "
              "made the whole release NaN): raise clip_stability")
        check(self.expected_batch_size is None or self.expected_batch_size > 0,
              f"expected_batch_size must be a positive integer, got {self.expected_batch_size}")
        check(self.loss_reduction == "mean" or self.expected_batch_size is None,
              "expected_batch_size normalises a 'mean' loss; with loss_reduction='sum' the gradient is "
              "not divided, so leave expected_batch_size unset or use loss_reduction='mean'")
        check(self.batch_bucket is None or self.augmentation_multiplicity == 1,
              "batch_bucket pads the samples of a call, and augmentation_multiplicity > 1 gives each sample several "
              "views: use one of them")
        check(self.batch_bucket is None or self.loss_reduction == "sum" or self.expected_batch_size is not None,
              "batch_bucket with loss_reduction='mean' needs expected_batch_size (a Poisson loader's, or given): "
              "the release is divided by n, and the padded batch's size is not the batch's")
        check(not (self.secure_noise and self.seed is not None),
              "secure_noise=True seeds the noise from OS entropy; pass either seed or secure_noise=True, not both")
        check(self.clip_groups is not None or self.clip_group_norms is None,
              "clip_group_norms needs clip_groups (one bound per group)")
        if self.clip_groups is not None:
            check(len(self.clip_groups) > 0 and all(len(g) > 0 for g in self.clip_groups),
                  "clip_groups must be non-empty groups of parameter names")
            repeated = sorted(n for n, k in Counter(n for g in self.clip_groups for n in g).items() if k > 1)
            check(not repeated, f"a parameter is in several clip groups: {repeated}")
            norms = self.clip_group_norms
            check(norms is None or len(norms) == len(self.clip_groups),
                  "clip_group_norms needs one bound per clip group")
            check(norms is None or all(r > 0 and math.isfinite(r) for r in norms),
                  "every clip group bound must be a positive finite number")
            check(norms is None or all(r >= MIN_GRAD_NORM for r in norms),
                  f"every clip group bound must be at least 2**-1000 (about {MIN_GRAD_NORM:.2g}), as max_grad_norm")
            total = math.sqrt(sum(r * r for r in norms)) if norms else 0.0
            check(total <= self.max_grad_norm * (1 + 1e-9),
                  f"clip_group_norms give a total sensitivity √(Σ R_g²) = {total:.6g} above max_grad_norm="
                  f"{self.max_grad_norm}, which sets the noise std σ·R: raise max_grad_norm to {total:.6g} "
                  "or lower the group bounds")


def real_number(name: str, value: object) -> float:
    """value as a float if it is a real number (Python or NumPy scalar), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (a tensor: pass t.item())" if hasattr(value, "item") and hasattr(value, "shape") else ""
        raise ConfigError(f"{name} must be a real number{hint}, got {type(value).__name__} {value!r}")
    return float(value)


def integer(name: str, value: object) -> int:
    """value as an int if it is an integer (Python or NumPy scalar), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)
