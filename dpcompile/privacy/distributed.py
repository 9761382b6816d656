"""Data-parallel DP-SGD over torch.distributed: each rank clips its own samples, the clipped sums are
summed across ranks, and the noise N(0, σ²R²) is added once, by rank 0.

Every rank runs the same DP model on its own Poisson shard (`poisson_loader` samples, on rank r of W,
the examples r, r + W, r + 2W, … at the global rate q, so the union of the ranks' batches is a
Poisson sample of the whole dataset at rate q). Each rank's backward leaves
(Σ_{i on r} C_i g_i + [r = 0]·N(0, σ²R²)) / n in .grad, with n the global expected batch size; the
optimizer step pre-hook (dpcompile.privacy.guard) sums .grad across ranks (one all-reduce per dtype
and device, before the step), so every rank applies (Σ_i C_i g_i + N(0, σ²R²)) / n. Steps are counted
on every rank alike; the accountant sees the global rate q. Settings that differ across ranks are
refused when the engine is made.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..errors import ConfigError


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_same_settings(fingerprint: dict[str, Any]) -> None:
    """ConfigError on every rank unless all ranks were given the same privacy settings."""
    rank, size = world()
    if size == 1:
        return
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, fingerprint)
    differ = sorted({k for other in gathered for k in set(other) | set(fingerprint)
                     if other.get(k) != fingerprint.get(k)})
    if differ:
        raise ConfigError(f"the ranks were given different privacy settings ({', '.join(differ)}): every rank "
                          "must build its DP model with the same settings (noise, bound, rate, clipping)")


def all_reduce_grads(params: Iterable[torch.Tensor]) -> None:
    """.grad summed across ranks in place: one flat all-reduce per (device, dtype)."""
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            buckets.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for grads in buckets.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        for grad, summed in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(summed)
