"""Runtime ops the rewritten graphs call: the Gaussian noise source.

The noise is one custom op call per step, so it reads its generator, standard deviation and on/off
flag at run time: seeds, secure mode, resumable RNG state and noise-free micro-steps need no
recompilation. Scaling, adding and normalising around it stay in the graph for inductor to fuse.
"""
from __future__ import annotations

import itertools
import math
import secrets
import weakref

import torch
from torch import Tensor

SECURE_DRAWS = 4  # secure mode sums this many draws / sqrt(k): fewer floating-point artifacts
_SOURCES: "weakref.WeakValueDictionary[int, NoiseSource]" = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


class NoiseSource:
    """N(0, std²) draws from a generator per device; std = σ·R; off during accumulation micro-steps."""

    def __init__(self, std: float, seed: int | None = None, secure: bool = False, every: int = 1) -> None:
        self.std, self.secure, self.enabled = float(std), secure, True
        self.seed = secrets.randbits(63) if secure or seed is None else int(seed)
        self.generators: dict[str, torch.Generator] = {}
        self.every = every  # gradient accumulation: noise on every `every`-th enabled call only
        self.calls = 0      # enabled calls (backwards) so far
        self.draws = 0      # noisy calls so far = logical DP-SGD steps (counted even when std is 0)
        self.handle = next(_HANDLES)
        _SOURCES[self.handle] = self

    def generator(self, device: torch.device) -> torch.Generator:
        """This source's generator on a device, seeded on first use."""
        key = str(device)
        if key not in self.generators:
            self.generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self.generators[key]

    def draw(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """numel independent N(0, std²) values (zeros when disabled or std is 0)."""
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        if not self.step() or self.std == 0.0:
            return torch.zeros(numel, dtype=dtype, device=device)
        gen = self.generator(device)
        if not self.secure:
            return torch.randn(numel, generator=gen, dtype=dtype, device=device).mul_(self.std)
        total = sum(torch.randn(numel, generator=gen, dtype=torch.float64, device=device) for _ in range(SECURE_DRAWS))
        return total.mul_(self.std / math.sqrt(SECURE_DRAWS)).to(dtype)

    def step(self) -> bool:
        """Count one backward; True if it is a noisy one (enabled, and the `every`-th enabled call)."""
        if not self.enabled:
            return False
        self.calls += 1
        if self.calls % self.every:
            return False
        self.draws += 1
        return True

    def state_dict(self) -> dict:
        """Counters, seed and generator states; in secure mode the counters only (a saved seed or
        generator state would reveal the noise of every later step)."""
        counts = {"draws": self.draws, "calls": self.calls}
        if self.secure:
            return counts
        return {**counts, "seed": self.seed, "generators": {k: g.get_state() for k, g in self.generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where a saved source stopped (secure mode: counters only, fresh entropy)."""
        self.draws, self.calls = int(state["draws"]), int(state.get("calls", state["draws"] * self.every))
        if self.secure:
            return
        self.seed = state["seed"]
        self.generators = {}
        for key, gen_state in state["generators"].items():
            self.generator(torch.device(key)).set_state(gen_state)


@torch.library.custom_op("dpcompile::gaussian_noise", mutates_args=())
def gaussian_noise(like: Tensor, numel: int, handle: int) -> Tensor:
    """A flat vector of numel N(0, std²) values from noise source `handle`, on like's device."""
    return _SOURCES[handle].draw(numel, like.dtype, like.device)


@gaussian_noise.register_fake
def _(like: Tensor, numel: int, handle: int) -> Tensor:
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return like.new_empty(numel, dtype=dtype)


@torch.library.custom_op("dpcompile::per_sample_conv_weight_grad", mutates_args=())
def per_sample_conv_weight_grad(grad_out: Tensor, input: Tensor, weight_shape: list[int], stride: list[int],
                                padding: list[int], dilation: list[int], groups: int) -> Tensor:
    """Per-sample conv weight gradients (B, *weight_shape): one convolution_backward with the batch
    folded into the groups, in full fp32 (an opaque op, so the batch size stays symbolic)."""
    B = grad_out.shape[0]
    if B == 0:
        return grad_out.new_zeros((0, *weight_shape))
    folded_weight = grad_out.new_empty((B * weight_shape[0], *weight_shape[1:]))
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_out.reshape(1, -1, *grad_out.shape[2:]), input.reshape(1, -1, *input.shape[2:]), folded_weight,
            None, stride, padding, dilation, False, [0] * len(stride), B * groups, [False, True, False])
    return grad_weight.view(B, *weight_shape)


@per_sample_conv_weight_grad.register_fake
def _(grad_out, input, weight_shape, stride, padding, dilation, groups):
    return grad_out.new_empty((grad_out.shape[0], *weight_shape))
