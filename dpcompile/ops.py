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

    def __init__(self, std: float, seed: int | None = None, secure: bool = False) -> None:
        self.std, self.secure, self.enabled = float(std), secure, True
        self.seed = secrets.randbits(63) if secure or seed is None else int(seed)
        self.generators: dict[str, torch.Generator] = {}
        self.draws = 0
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
        if not self.enabled or self.std == 0.0:
            return torch.zeros(numel, dtype=dtype, device=device)
        self.draws += 1
        gen = self.generator(device)
        if not self.secure:
            return torch.randn(numel, generator=gen, dtype=dtype, device=device).mul_(self.std)
        total = sum(torch.randn(numel, generator=gen, dtype=torch.float64, device=device) for _ in range(SECURE_DRAWS))
        return total.mul_(self.std / math.sqrt(SECURE_DRAWS)).to(dtype)

    def state_dict(self) -> dict:
        """Seed and generator states (not reproducible across runs in secure mode by design)."""
        return {"seed": self.seed, "draws": self.draws,
                "generators": {k: g.get_state() for k, g in self.generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where a saved source stopped."""
        self.seed, self.draws = state["seed"], state["draws"]
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
