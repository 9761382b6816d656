"""Data-parallel DP-SGD over torch.distributed: each rank clips its own samples, the clipped sums are
summed across ranks, and the noise N(0, σ²R²) is added once, by rank 0.

Every rank runs the same DP model on its own Poisson shard (`poisson_loader` samples, on rank r of W,
the examples r, r + W, r + 2W, … at the global rate q, so the union of the ranks' batches is a
Poisson sample of the whole dataset at rate q). Each rank's backward leaves
(Σ_{i on r} C_i g_i + [r = 0]·N(0, σ²R²)) / n in .grad, with n the global expected batch size; a
`Reducer` sums these releases across ranks, overlapped with the backward, and the optimizer step
pre-hook (dpcompile.privacy.guard) waits for it, so every rank applies (Σ_i C_i g_i + N(0, σ²R²)) / n.
Steps are counted on every rank alike; the accountant sees the global rate q. Settings that differ
across ranks are refused when the engine is made.

The reduction of one logical step (a "round", opened by the noisy backward, on every rank alike):
the parameters are split once into fixed buckets (reverse parameter order, one device and dtype each,
about `bucket_mb` MB); a bucket is all-reduced asynchronously as one flat tensor
[g_1, …, g_k, present_1, …, present_k, accepted] as soon as all its parameters' gradients of the round are
final (their post-accumulate-grad hooks), in bucket order; the buckets still open when the backward
ends (parameters without a gradient on this rank) go out then, with zeros and present = 0 (on rank 0, with
their noise and present = 1: a parameter only another rank's batch used, a branch taken on long sequences, was
summed without noise before, since rank 0's graph drew noise only for what it released). A parameter the noisy
backward did not reach whose .grad holds this logical step's micro-step sums (used in an earlier micro-batch only)
goes out with them (and its noise on rank 0) as its release, as `guard.release_absent` makes it in one process.
`accepted` is 0 where a .grad of the bucket may not be applied on this rank (raw or mixed gradients, two noisy
releases: guard's `problem`), else 1; a sum below the number of ranks is refused on every rank, not only on the rank
whose step pre-hook sees the problem (the others applied it, raw gradient included). So every
rank issues the same all-reduces, of the same sizes, in the same order, exactly once per round,
whatever gradients it got: no deadlock, no tensors mixed. The step waits for them and copies the sums
back into .grad (a parameter without a gradient anywhere keeps .grad None).
"""
from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError, ReleaseError
from . import guard

BUCKET_MB = 25.0  # bucket size cap, as DDP's
Noise = Callable[[int, torch.dtype, torch.device], Tensor]  # a parameter's noise, as its DP backward adds it


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a collective: every rank must call it); [obj] in one process."""
    size = world()[1]
    if size == 1:
        return [obj]
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, obj)
    return gathered


def check_same_settings(fingerprint: dict[str, Any]) -> None:
    """ConfigError on every rank unless all ranks were given the same privacy settings."""
    gathered = gather(fingerprint)
    differ = sorted({k for other in gathered for k in set(other) | set(fingerprint)
                     if other.get(k) != fingerprint.get(k)})
    if differ:
        raise ConfigError(f"the ranks were given different privacy settings ({', '.join(differ)}): every rank "
                          "must build its DP model with the same settings (noise, bound, rate, clipping)")


class Bucket:
    """Fixed parameters of one device and dtype, reduced as one flat tensor [g_1, …, g_k, present_1, …]."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = [weakref.ref(p) for p in params]
        self.numels = [p.numel() for p in params]
        self.device, self.dtype = params[0].device, params[0].dtype

    def signature(self) -> tuple:
        """What must agree across ranks: device type, dtype, sizes (the device index may differ)."""
        return self.device.type, str(self.dtype), tuple(self.numels)

    def flatten(self, released: set[int], noise: Noise | None) -> tuple[Tensor, list[int | None]]:
        """This rank's releases, flat, and the .grad versions it read. Where this rank released nothing: zeros and
        present 0, or, on the rank that adds the noise (`noise`), that parameter's noise and present 1 (another
        rank's batch may have used it, and its release would otherwise be summed without noise). Last, 1 unless a
        .grad of the bucket is refused on this rank (then 0)."""
        parts, versions, noised, refused = [], [], [], False
        for ref, numel in zip(self.params, self.numels):
            p = ref()
            grad = p.grad if p is not None and id(p) in released else None
            refused = refused or guard.refused(p)
            versions.append(None if grad is None else grad._version)
            noised.append(grad is None and noise is not None)
            if grad is not None:
                parts.append(grad.detach().reshape(-1).to(self.dtype))
            elif noise is not None:
                parts.append(noise(numel, self.dtype, self.device))
            else:
                parts.append(torch.zeros(numel, dtype=self.dtype, device=self.device))
        if None in versions or refused:
            present = torch.tensor([*(v is not None or n for v, n in zip(versions, noised)), not refused],
                                   dtype=self.dtype, device=self.device)
        else:  # the usual case: one fill, no host-to-device copy
            present = torch.ones(len(versions) + 1, dtype=self.dtype, device=self.device)
        return torch.cat([*parts, present]), versions

    def unflatten(self, summed: Tensor, versions: list[int | None]) -> list[Tensor]:
        """.grad = Σ_r g_r (copied in where this rank released one, set where only others did); those parameters."""
        total = sum(self.numels)
        anywhere = summed[total:-1].tolist() if None in versions else [1.0] * len(versions)  # host read if needed
        values = summed[:total].split(self.numels)
        written, targets, sums = [], [], []
        for ref, value, version, present in zip(self.params, values, versions, anywhere):
            p = ref()
            if p is None or not present:
                continue
            if version is None:  # others' releases only
                p.grad = value.view(p.shape).clone()
            elif p.grad is None:  # cleared since the backward: stays cleared
                continue
            elif p.grad._version != version:
                raise ReleaseError(CHANGED_MESSAGE)
            else:
                targets.append(p.grad)
                sums.append(value.view(p.grad.shape))
            written.append(p)
        if targets:
            torch._foreach_copy_(targets, sums)  # one launch for the bucket, not one per parameter
        return written


CHANGED_MESSAGE = ("a gradient was changed in place between the DP backward and the optimizer step: in data "
                   "parallel training each rank's release is sent to be summed across ranks as the backward "
                   "produces it, and the step applies that sum, so the change would be lost. Leave .grad unchanged "
                   "until opt.step(), or set dp_model.privacy.reducer.overlap = False on every rank to sum .grad as "
                   "it is at the step")


REFUSED_MESSAGE = ("a rank refused its part of this step (its .grad held a gradient that may not be applied: a raw or "
                   "mixed gradient, or two noisy releases; that rank's ReleaseError says which), and the sum across "
                   "ranks holds it, so the step is refused on every rank and nothing was written into .grad. On "
                   "every rank: opt.zero_grad() and go on with the next batch, after fixing what that rank's error "
                   "names")


class Round:
    """One logical step's reduction: the fixed buckets, which parameters are final, the all-reduces in flight."""

    def __init__(self, buckets: list[Bucket], noise: Noise | None = None,
                 generation: tuple[int, int] | None = None) -> None:
        self.buckets, self.noise, self.generation = buckets, noise, generation
        self.ended = False  # end_backward ran
        self.slot = {id(ref()): i for i, b in enumerate(buckets) for ref in b.params if ref() is not None}
        self.waiting = [len(b.params) for b in buckets]  # parameters not yet final, per bucket
        self.released: set[int] = set()
        self.launched: list[tuple[Bucket, Tensor, list[int | None], Any]] = []

    def ready(self, p: Tensor, launch: bool) -> None:
        """p's gradient of this round is final; if `launch`, all-reduce every bucket now complete, in bucket order."""
        i = self.slot.get(id(p))
        if i is None or id(p) in self.released:
            return
        self.released.add(id(p))
        self.waiting[i] -= 1
        while launch and len(self.launched) < len(self.buckets) and not self.waiting[len(self.launched)]:
            self.launch()

    def launch(self) -> None:
        """All-reduce the next bucket asynchronously."""
        bucket = self.buckets[len(self.launched)]
        flat, versions = bucket.flatten(self.released, self.noise)
        self.launched.append((bucket, flat, versions, dist.all_reduce(flat, async_op=True)))

    def end_backward(self, launch: bool) -> None:
        """The noisy backward is over. A parameter it did not reach whose .grad holds micro-step sums of its logical
        step (used in an earlier micro-batch only) is released with them (and its noise, on the noising rank), as
        `guard.release_absent` does in one process; if `launch`, the buckets still open go out now."""
        if not self.ended and self.generation is not None:
            for p in (ref() for bucket in self.buckets for ref in bucket.params):
                if p is not None and id(p) not in self.released and \
                        guard.close_micro_steps(p, self.generation, self.noise) is not None:
                    self.ready(p, launch=False)
        self.ended = True
        if launch:
            self.launch_rest()

    def launch_rest(self) -> None:
        """Launch the buckets still open (parameters without a gradient: zeros), in bucket order."""
        while len(self.launched) < len(self.buckets):
            self.launch()

    def finish(self, apply: bool) -> list[Tensor]:
        """Launch the rest, wait for all; if `apply`, write the sums into .grad and return those parameters, unless a
        rank refused a .grad the sums hold (ReleaseError on every rank, nothing written: one host read a step)."""
        self.end_backward(launch=True)
        for *_, work in self.launched:
            work.wait()
        if not apply:
            return []
        ranks = world()[1]
        if any(float(flat[-1]) < ranks for _, flat, _, _ in self.launched):
            raise ReleaseError(REFUSED_MESSAGE)
        return [p for bucket, flat, versions, _ in self.launched for p in bucket.unflatten(flat, versions)]


class Reducer:
    """Sums the ranks' releases of each logical step: bucketed async all-reduces launched as the gradients
    become final (`overlap`; else all at the step), waited for before the optimizer step."""

    def __init__(self, bucket_mb: float = BUCKET_MB, overlap: bool = True, noise: Noise | None = None) -> None:
        self.bucket_mb, self.overlap, self.noise = bucket_mb, overlap, noise  # noise: the noising rank's
        self.params: list[weakref.ref] = []  # in the order tracked (the model's parameter order)
        self.layout: tuple[tuple, list[Bucket]] | None = None  # (key, buckets), rebuilt if the key changes
        self.round: Round | None = None

    def add(self, params: Iterable[Tensor]) -> None:
        """Reduce these parameters' gradients too (every rank must add the same ones, in the same order)."""
        known = {id(ref()) for ref in self.params}
        self.params += [weakref.ref(p) for p in params if id(p) not in known]

    def open(self, in_backward: bool, generation: tuple[int, int] | None = None) -> None:
        """A noisy backward (of the engine's `generation`) starts a round (an unfinished previous one is completed
        and dropped); inside a backward, the buckets still open at its end are launched then."""
        if self.round is not None:
            self.round.finish(apply=False)
        self.round = current = Round(self.buckets(), self.noise, generation)
        if in_backward:
            torch.autograd.Variable._execution_engine.queue_callback(lambda: current.end_backward(self.overlap))

    def ready(self, p: Tensor) -> None:
        """p's gradient of the open round is final (its post-accumulate-grad hook)."""
        if self.round is not None:
            self.round.ready(p, launch=self.overlap)

    def finish(self) -> list[Tensor]:
        """Wait for the open round's sums and write them into .grad; the parameters written (none if no round)."""
        current, self.round = self.round, None
        return [] if current is None else current.finish(apply=True)

    def buckets(self) -> list[Bucket]:
        """The fixed buckets of the live parameters (rebuilt, and checked across ranks, when they change)."""
        params = [p for p in (ref() for ref in self.params) if p is not None and p.requires_grad]
        key = (self.bucket_mb, tuple((id(p), p.device, p.dtype, p.shape) for p in params))
        if self.layout is None or self.layout[0] != key:
            buckets = split(params, int(self.bucket_mb * 2**20))
            check_same_layout([b.signature() for b in buckets])
            self.layout = key, buckets
        return self.layout[1]


def split(params: list[Tensor], cap_bytes: int) -> list[Bucket]:
    """Buckets of ≤ cap_bytes (or one parameter) per (device, dtype), walking the parameters in reverse order."""
    done: list[Bucket] = []
    open_: dict[tuple, tuple[list[Tensor], int]] = {}  # (device, dtype) -> (parameters, bytes)
    for p in reversed(params):
        key, size = (p.device, p.dtype), p.numel() * p.element_size()
        group, used = open_.get(key, ([], 0))
        if group and used + size > cap_bytes:
            done.append(Bucket(group))
            group, used = [], 0
        group.append(p)
        open_[key] = group, used + size
    return done + [Bucket(group) for group, _ in open_.values() if group]


def check_same_layout(signature: list[tuple]) -> None:
    """ConfigError on every rank unless all ranks bucket the same parameter sizes and dtypes."""
    if any(other != signature for other in gather(signature)):
        raise ConfigError("the ranks' DP models have different trainable parameters (sizes, dtypes or order): data "
                          "parallel training sums each parameter's gradient across ranks, so every rank must train "
                          "the same model")
