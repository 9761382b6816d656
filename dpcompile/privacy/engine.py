"""The privacy engine of a DPModel: the one owner of its privacy state.

Constructed once from the DPConfig, it owns the noise generators, the counters (backwards, noisy
draws = logical steps, dropped samples), the accountant, the accumulation state, and the guards on
releases (dpcompile.privacy.guard). The compiled backward's noise op
`dpcompile::gaussian_noise(like, numel, handle, dropped)` finds it by handle (dpcompile.ops) and
calls `release()`, which refuses a second DP forward in the same autograd graph task (one sample
would contribute twice with one noise draw), counts the backward, and draws the noise. A logical
step is counted exactly when noise is drawn; `epsilon()` first records the steps drawn since it last
looked into the Accountant (σ and q are fixed, so recording late changes nothing). Micro-steps
without noise (gradient accumulation) are never counted; a step with σ = 0 is counted and makes ε
infinite.

Data parallel (dpcompile.privacy.distributed): rank 0 alone draws the noise; the engine's `reducer`
sums the ranks' releases (a round opened by each noisy backward, its buckets all-reduced as the
gradients become final, waited for in the optimizer step pre-hook). `state_dict()` is then a
collective: every rank gets the same dict, with every rank's sampler position ("ranks"), so rank 0
alone writes it and `load_state_dict` gives each rank its own part back.

Secure noise (`secure_noise=True`): the generator is seeded from OS entropy and its seed and state
are never saved. Floating-point caveat: a Gaussian sampler on floats does not produce an exact
Gaussian; the set of values it can return leaves gaps that depend on the mean, so a released value
can reveal which input produced it (Mironov 2012 for Laplace; Holohan & Braghin 2021,
arXiv:2107.10138, for Gaussian samplers). As they propose, secure mode returns the sum of 4 float64
draws scaled by 1/2, whose support has no such gaps at the output precision. It is a mitigation,
not a proof: torch's generators (Mersenne Twister on CPU, Philox on GPU) are not cryptographic.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import numbers
import secrets
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ..config import DPConfig
from ..errors import ConfigError, DPCompileError, ReleaseError
from ..precision import check_products
from ..ops import gaussian, live_owners, register_owner
from . import distributed, guard
from .accounting import Accountant, _check_delta, calibrate_noise_multiplier, steps_for
from .sampling import PoissonBatchSampler, stream_seed

logger = logging.getLogger(__name__)

# 2: "dropped" (samples given clip factor 0, kept() in the rewrite); 1 is read as 0 dropped. 3: "parameters" (a
# hash of the trainable parameters the state belongs to, checked at the next release; older states: unchecked).
STATE_VERSION = 3
STATE_KEYS = {"version", "config", "steps", "accountant", "noise", "sampler", "dropped", "parameters"}
VERSION_KEYS = {1: STATE_KEYS - {"dropped", "parameters"}, 2: STATE_KEYS - {"parameters"}, 3: STATE_KEYS}
RANK_KEYS = {"sampler", "dropped"}  # data parallel: each rank's own, listed under "ranks" (one dict per rank)
DROPPED_CHECK_EVERY = 100  # noisy steps between reads of the on-device dropped-sample counter


class PrivacyEngine:
    """ε(δ) spent by a DP model's noisy steps (Poisson rate q, σ); noise, counters, accumulation, resumable state."""

    def __init__(self, config: DPConfig, *, sample_rate: float | None = None, accountant: str = "pld",
                 gradient_accumulation_steps: int = 1, target_delta: float | None = None,
                 planned_steps: int | None = None, data_loader: Any = None) -> None:
        check_accumulation(gradient_accumulation_steps, config)
        self.config = config
        self.sampler = poisson_sampler_of(data_loader)
        self.sample_rate = sample_rate_of(sample_rate, self.sampler)
        self.accountant = Accountant(accountant)
        self.gradient_accumulation_steps = self.every = int(gradient_accumulation_steps)
        self.target_delta, self.planned_steps = target_delta, planned_steps
        if target_delta is not None:
            _check_delta(target_delta)
        if self.sample_rate is not None:
            check_normaliser(config)
        self.std, self.secure = config.noise_multiplier * config.max_grad_norm, config.secure_noise
        self.seed = secrets.randbits(63) if self.secure or config.seed is None else int(config.seed)
        self.generators: dict[str, torch.Generator] = {}
        self.enabled = True  # False inside accumulating()
        self.calls = 0       # enabled backwards so far
        self.draws = 0       # noisy backwards so far = logical DP-SGD steps (counted even when std is 0)
        self.generation = 0  # bumped at each noisy release and each load_state_dict (never saved): see guard
        self._dropped: dict[str, Tensor] = {}  # per device, on device: samples dropped (clip factor 0)
        self._dropped_saved = 0                # dropped samples restored from a checkpoint
        self._dropped_warned = False
        self._task: tuple[int, str] | None = None  # (autograd graph task, kind) of the last noise op call
        self.earlier_releases_unchecked = True  # until the first release (warn_earlier_releases)
        self._warned_joint = False  # another engine's release met this one's in one backward (warned once)
        self._parameters_saved: str | None = None  # a loaded state's parameters_hash(), until the next release
        self._micro_position: tuple[int, int] | None = None  # the sampler's position at this logical step's start
        self._noisy_position: tuple[int, int] | None = None  # the sampler's position at the last noisy release
        self._batches_base = (0, batches_drawn(self.sampler))  # (noisy releases, batches drawn) when it was attached
        self._sampler_seeds = seeds_of(self.sampler)  # the seeds of every sampler attached: each draws batches once
        self._reached: set[int] | None = None  # one process: the parameters this noisy release reached (ids)
        self._tracked_count = 0  # how many parameters this engine has guarded (track): all reached, none absent
        self.batch: int | None = None  # the batch size of the last DP forward with grad (a 'mean' loss, no fixed n)
        self._forward_thread: threading.Thread | None = None  # the thread of that forward: the training loop's
        self.rows: int | None = None  # the samples of the DP forward whose backward runs now (note_rows)
        self._rows_in: int | None = None  # with a PoissonLoader: the samples this logical step's backwards had so far
        # with a PoissonLoader: (the sampler's stream of handed batches, how many of them noisy releases consumed,
        # the latest loop at the last of them), and (the stream, where the loop before the latest started) when the
        # sampler was attached
        self._consumed = (0, 0, 0)
        self._attached = attached_at(self.sampler)
        self.half_products = False  # a compiled DP backward multiplies bf16/fp16 matrices (its backend says so)
        self.rank, self.world_size = distributed.world()  # data parallel: rank 0 alone adds the noise
        check_shard(self.sampler, self.rank, self.world_size)
        distributed.check_same_settings(self.fingerprint())
        if self.world_size > 1:  # each rank's release is divided by the global n before the sum
            check_normaliser(config)
        self.reducer = distributed.Reducer(noise=self.absent_noise if self.rank == 0 and self.std > 0 else None) \
            if self.world_size > 1 else None  # sums the ranks' releases
        self.handle = register_owner(self)

    # --- what the compiled backward calls ---

    @torch._dynamo.disable  # the noise op's host side runs as written, never traced
    def release(self, numel: int, dtype: torch.dtype, device: torch.device, dropped: Tensor) -> Tensor:
        """This backward's noise: N(0, std²) on a noisy backward, zeros on a micro-step; counts both."""
        task = torch._C._current_graph_task_id()
        if task >= 0 and self._task is not None and self._task[0] == task:
            raise ReleaseError(
                "two forward calls of the same DP model meet in one backward (e.g. (dp(view1).sum() + "
                "dp(view2).sum()).backward()): one sample would contribute twice to a step that is clipped and "
                "noised once. Pass all views of a sample in one call, as extra dims of each sample (e.g. "
                "dp(torch.stack([view1, view2], dim=1)), the model handling dim 1), so they are clipped together; "
                "or run separate backwards inside privacy.accumulating() for separate batches")
        if not self._warned_joint and task >= 0 and any(o is not self and o.backward_kind(task) for o in live_owners()):
            self._warned_joint = True
            warnings.warn(
                "dpcompile: two DP models meet in one backward (the outputs of both in one loss): each clips a "
                "sample's gradient to R and accounts for its own release, so what the batch costs is the composition "
                "of both accounts (one sample moves both releases: √2·R together), as with two separate backwards, "
                "not either ε alone. If they are parts of one model, make one DP model of a module that holds both, "
                "so that each sample is clipped once over all their parameters", RuntimeWarning, stacklevel=2)
        if self.world_size > 1 and not (self.reducer is not None and self.reducer.params):
            raise ConfigError(
                "data parallel: rank 0 alone adds the noise, so the ranks' clipped sums must be summed before the "
                "step, which the DP model of dpcompile.dpcompile() does for its parameters; dpcompile.backend() "
                "runs in one process only (or this DP model has no trainable parameter)")
        check_products(device, self.half_products)
        if self._parameters_saved is not None:
            self.check_parameters()
        noisy_next = self.enabled and (self.calls + 1) % self.every == 0
        positions = self.check_one_poisson_batch(noisy=noisy_next)
        rows = self.check_rows()
        if positions is not None:  # (both checks passed: now they count this backward)
            self._micro_position, self._noisy_position = positions
        self.commit_rows(rows, noisy_next)
        if self.earlier_releases_unchecked:
            self.warn_earlier_releases()
        noisy = self.step()
        self._task = (task, guard.NOISY if noisy else guard.UNNOISED)
        if noisy and self.reducer is not None:
            self.reducer.open(in_backward=task >= 0, generation=(self.handle, self.generation))
        elif noisy:
            self.open_absent(in_backward=task >= 0)
        self._count_dropped(dropped)
        if noisy and self.draws % DROPPED_CHECK_EVERY == 0:
            self._warn_dropped()
        if not noisy or self.std == 0.0 or self.rank != 0:  # the ranks' releases are summed: noise once
            return torch.zeros(numel, dtype=dtype, device=device)
        return gaussian(numel, self.std, self.generator(device), self.secure, dtype, device)

    def warn_earlier_releases(self) -> None:
        """Once, at the first release: the parameters had more noisy releases from other DP models (another over
        the same module, live, or one made before and gone: a DP model per phase of training) than this account
        holds (it holds them when loaded with the earlier model's privacy.state_dict()). Looked at here, not when
        the DP model is made: `dp = dpcompile(model, ...)` keeps the earlier one alive while it makes the next, whose
        account the following line may load."""
        self.earlier_releases_unchecked = False
        earlier = guard.releases_of(p for _, p in guard.guarded_params(self))
        if self.steps < earlier:
            warnings.warn(
                f"dpcompile: this DP model's parameters already had {earlier} noisy release(s) from another DP model "
                f"(live, or made before and gone), and this one's account holds {self.steps} step(s): the ε it "
                "reports leaves the others out, where the privacy spent is that of all the steps together. Keep one "
                "DP model for the whole training, or continue the earlier account: save its privacy.state_dict() "
                "with the model's state_dict() and load both into the new DP model before its first step",
                RuntimeWarning, stacklevel=2)

    def absent_noise(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The noise of a parameter that this step's DP backward did not release (data parallel, rank 0: only another
        rank's batch used it; one process: no capture of this step used it, a branch on a shape), as that backward
        would have added it: N(0, std²) / n, from the same generator (zeros when std is 0)."""
        work = torch.float32 if dtype != torch.float64 else dtype
        if self.std == 0.0:
            return torch.zeros(numel, dtype=dtype, device=device)
        noise = gaussian(numel, self.std, self.generator(device), self.secure, work, device)
        return (noise / self.normaliser()).to(dtype)

    def normaliser(self) -> int:
        """n, what a release is divided by: expected_batch_size; 1 for a 'sum' loss; for a 'mean' loss without a
        fixed n (one process, no sample rate), the size of the batch the DP model last ran on (as its backward
        divides by; an empty batch runs as one padded sample)."""
        if self.config.expected_batch_size is not None or self.config.loss_reduction != "mean":
            return self.config.expected_batch_size or 1
        return max(self.batch or 1, 1)

    def note_batch(self, batch: int) -> None:
        """A DP forward (with grad) on `batch` samples, in the training loop's thread: the normaliser of a 'mean'
        loss without a fixed n."""
        self.batch, self._forward_thread = batch, threading.current_thread()

    def note_rows(self, rows: int) -> None:
        """The backward of a DP forward on `rows` samples starts (a pre-hook on its autograd node)."""
        self.rows = rows

    def check_rows(self) -> int | None:
        """With a PoissonLoader, whose sampler knows the batches its loop was handed: one logical step's backwards
        may hold no more samples than the loop's batch (at most the largest of those handed out and not yet
        consumed by this engine's noisy releases). More would be a sample in two micro-batches or twice in one call
        (the batch, or a view of it, used again: two augmentations in separate backwards), each clipped to R on its
        own, so that sample would count up to 2R in a step whose noise is for R. Returns the step's samples with this
        backward's (None where the loader does not tell); changes nothing (commit_rows does, once it is released)."""
        rows, self.rows = self.rows, None
        limit = None if self.sampler is None else self.sampler.largest_from(self.batches_consumed())
        if rows is None or limit is None:
            return None
        total = (self._rows_in or 0) + rows
        if total > limit:
            raise ConfigError(
                f"this logical step's backwards ran on {total} samples, more than the {limit} of the loader's "
                "batch: a sample used twice (the batch, or a view or augmentation of it, in a second micro-batch or "
                "concatenated to it in one call) is clipped to R each time, so it would count up to 2R in a step "
                "whose noise is for R. Split the batch into disjoint micro-batches (x.tensor_split(k)); pass a "
                "sample's views in one call, as extra dims of each sample (augmentation_multiplicity=K), so they are "
                "clipped together. To drop the micro-steps taken so far: dp_model.privacy.drop_accumulated(). (Rows "
                "from outside the loader, public data added to the batch, cannot be told from a sample used twice: "
                "there, build the loader as torch.utils.data.DataLoader(dataset, batch_sampler=dpcompile."
                "PoissonBatchSampler(...)), which does not tell the DP model its batches)")
        return total

    def commit_rows(self, total: int | None, noisy: bool) -> None:
        """This backward is released: its samples count towards the logical step's (a micro-step), or the step is
        complete and its batch consumed (a noisy release)."""
        if noisy:
            self._rows_in = None
            handed = None if self.sampler is None else self.sampler.handed()
            if handed is not None:  # (at most as many as were handed out)
                self._consumed = handed[0], min(self.batches_consumed() + 1, handed[1]), self.sampler.latest_loop()
        elif total is not None:
            self._rows_in = total

    def batches_consumed(self) -> int:
        """How many batches of the sampler's stream of handed batches this engine's noisy releases consumed, at
        least those before the batch it is on (a lower bound: more slack, never a refusal of the batch in use).
        Where the loop runs in the DP model's thread, it is on the latest loop's batches, or the last one's last if
        it has released some of this stream (a loop fetching one batch ahead across epochs; a new loop drops what
        the last one fetched ahead). Where another thread draws (a prefetcher, or the steps run in a worker thread),
        it is on the latest run of loops started in one thread (PoissonBatchSampler.run_start: a prefetcher
        iterating epoch after epoch may hold the last loops' batches in its queue; a loop started in another thread,
        an evaluation pass or a prefetcher made for the last epoch, is done with) or the last one's last, and not on
        the loops that began after its last release and were followed by another before this one (one batch is
        handed per batch trained on, so a loop handed out whole in between was an evaluation pass: counted, it let
        a batch be released many times); a DP model made or attached during a run is on the loop before the one
        then latest or a later one."""
        handed = None if self.sampler is None else self.sampler.handed()
        if handed is None:
            return 0
        stream, own, seen = self._consumed
        latest = self.sampler.latest_loop()
        if not self.drawn_elsewhere():
            start = self.sampler.loop_start(latest)
            return start if stream != handed[0] else max(own, start - 1)
        if stream != handed[0]:
            start = self.sampler.run_start()
            floor = self._attached[1] if self._attached[0] == handed[0] else 0
            return max(start or 0, floor)
        start = self.sampler.loop_start(latest) if latest - seen >= 2 else self.sampler.run_start()
        return own if start is None else max(own, start - 1)

    def drawn_elsewhere(self) -> bool:
        """The sampler draws in another thread than the DP forward runs in (a background prefetcher): its position
        and count run ahead of the loop by the prefetcher's queue, at times of its own."""
        return None not in (self.sampler.drawn_in, self._forward_thread) and self.sampler.drawn_in is not \
            self._forward_thread

    def open_absent(self, in_backward: bool) -> None:
        """One process, a noisy release: note the parameters it reaches (guard's hook calls `released`); when the
        backward ends, every trainable parameter of the DP model that it did not reach (a branch on a shape not
        taken this step) gets its noise-only release. Left without one, its unchanged .grad (None) and weights would
        show, without noise, which branch the private batch (its size, its longest sequence) took. With σ = 0 that
        release is zeros: a .grad that is None stays None (as under data parallelism), one holding this logical step's
        micro-step sums becomes its release."""
        self._reached = set()
        if in_backward:
            torch.autograd.Variable._execution_engine.queue_callback(self.release_absent)

    def release_absent(self) -> list[Tensor]:
        """The noise-only releases of the open noisy release (see open_absent); the parameters written. A backward
        that reached no parameter's .grad (torch.autograd.grad) gets none."""
        reached, self._reached = self._reached, None
        if not reached or len(reached) >= self._tracked_count:  # every parameter it guards was reached
            return []
        return guard.release_absent(self, reached, self.absent_noise, fresh=self.std > 0)

    def check_one_poisson_batch(self, noisy: bool = False) -> tuple | None:
        """With a Poisson loader, a logical step is one Poisson batch, and one Poisson batch one logical step.

        Accumulation (k micro-steps of gradient_accumulation_steps=k, or backwards inside privacy.accumulating()
        before the noisy one): the micro-batches must split one Poisson batch. Drawn as several loader batches, a
        sample may be in several of them (sensitivity k·R) and joins a step with probability about k·q, not the q the
        accountant counts (ε 4.5 reported where 10.0 was spent, q = 0.1, k = 2). The loader hands out its next batch
        when the loop asks for it, so the sampler's position must not move between the micro-steps of one logical
        step (prefetching only shifts it).

        Reuse: a second noisy release at the sampler position of the last one is a second release of the same batch
        (two optimizer steps per batch, or LBFGS evaluating its closure several times), which the accountant would
        count as an independently sampled step (ε 0.72 reported where 6.4 was spent). A loader that prefetches runs
        ahead of the loop, and at the end of an epoch its last batches share the sampler's final position: there a
        repeat is refused once more noisy releases than drawn batches were made since the sampler was attached.
        Where a PoissonLoader's loop tells what it handed out, a noisy release with none of its batches left
        unconsumed by this engine is refused as well.

        A background prefetcher (a thread iterating the loader into a queue) draws at times of its own: the position
        may move inside a logical step, or not between two, with nothing wrong. Where the sampler draws in another
        thread than the DP forward runs in, a PoissonLoader's stream of handed batches (batches_consumed, and
        check_rows) stands for the position; a loader that does not tell is checked for reuse by counts alone (no
        more noisy releases than batches drawn), and for accumulation by its position, the refusal saying that a
        prefetcher moves it and what to do. Returns the (micro-step, noisy) positions once this backward is
        released (None: no sampler)."""
        if self.sampler is None:
            return None
        position = (self.sampler.epoch, self.sampler._step)
        handed = self.sampler.handed()
        elsewhere = self.drawn_elsewhere()
        # (None: no micro-step yet, or resumed mid-step)
        if self._micro_position not in (None, position) and (not elsewhere or handed is None):
            how = (f"gradient_accumulation_steps={self.every}" if self.every > 1 and self.calls % self.every else
                   "privacy.accumulating()")
            raise ConfigError(
                f"{how} with a Poisson loader: the loader handed out another batch inside one logical step. A logical "
                "step is one Poisson batch split into micro-batches (for x, y in loader: for xm, ym in zip(x.tensor_"
                f"split(k), y.tensor_split(k)): ...); a loader batch per micro-step would let a sample join a step "
                "several times, beyond the clipping bound and the sampling rate the accountant counts. To drop the "
                "micro-steps taken so far: dp_model.privacy.drop_accumulated()" + (
                    ". (The loader draws its batches in another thread than the DP model runs in: if that is a "
                    "background prefetcher, the position moves at times of its own; build the loader with "
                    "dpcompile.poisson_loader(dataset, sample_rate, ...), whose loop tells the DP model which "
                    "batches it handed out)" if elsewhere else ""))
        if not noisy:
            return (position if self._micro_position is None else self._micro_position), self._noisy_position
        if handed is not None:
            reused = self.batches_consumed() >= handed[1]
        else:
            reused = not self.batch_left()
        if not elsewhere:
            reused = reused or (position == self._noisy_position and not self.in_prefetch_tail(position))
        if reused:
            raise ReleaseError(
                "a second noisy release of the same Poisson batch: the loader has handed out no new batch since the "
                "last noisy backward (two optimizer steps on one batch, or an optimizer such as torch.optim.LBFGS "
                "whose step evaluates its closure several times on one batch). The accountant counts every noisy "
                "release as a fresh Poisson sample at rate q, so reusing a batch would spend more privacy than "
                "reported. Take one backward and one optimizer step per loader batch (for x, y in loader: "
                "loss.backward(); opt.step(); opt.zero_grad()); optimizers that re-evaluate a closure on the same "
                "batch (LBFGS) are not supported. If the batches come from another loader than the DP model's "
                "data_loader (a loader made anew for each epoch), the DP model cannot see its position: make the "
                "loader once, or hand the new one over with dp_model.privacy.attach(loader)")
        return None, position

    def in_prefetch_tail(self, position: tuple[int, int]) -> bool:
        """The sampler has handed out its epoch's last batch while a prefetching loader still hands out the batches
        before it: fewer noisy releases than drawn batches since the sampler was attached."""
        return position[1] >= self.sampler.steps and self.batch_left()

    def batch_left(self) -> bool:
        """Fewer noisy releases than batches drawn since the sampler was attached."""
        releases, drawn = self._batches_base
        return self.draws - releases < batches_drawn(self.sampler) - drawn

    def rebase_batches(self) -> None:
        """The sampler attached or resumed: count releases and batches from here."""
        self._micro_position = self._noisy_position = self._rows_in = None
        self._batches_base = (self.draws, batches_drawn(self.sampler))
        self._consumed = (0, 0, 0)  # (another sampler numbers its streams from 1 too)
        self._attached = attached_at(self.sampler)

    def backward_kind(self, task: int) -> str | None:
        """guard.NOISY / UNNOISED if this engine's noise op ran in autograd graph task `task`, else None."""
        return self._task[1] if self._task is not None and self._task[0] == task and task >= 0 else None

    def step(self) -> bool:
        """Count one backward; True if it is a noisy one (enabled, and the `every`-th enabled call)."""
        if not self.enabled:
            return False
        self.calls += 1
        if self.calls % self.every:
            return False
        self.draws += 1
        self.generation += 1
        return True

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator on a device, seeded on first use with a seed of its own (`stream_seed`): not the seed a
        sampler or another device's generator draws from."""
        key = str(device)
        if key not in self.generators:
            self.generators[key] = torch.Generator(device=device).manual_seed(stream_seed(self.seed, "noise", key))
        return self.generators[key]

    def track(self, named_params: Iterable[tuple[str, Tensor]]) -> None:
        """Guard these trainable parameters: an optimizer step over them must apply exactly one noisy release."""
        named_params = list(named_params)
        self._tracked_count += len(named_params)
        guard.track(self, named_params)
        if self.reducer is not None:
            self.reducer.add(p for _, p in named_params)

    def released(self, param: Tensor) -> None:
        """param's gradient of this logical step is final (guard's hook): data parallel starts summing it; one
        process notes that the release reached it."""
        if self.reducer is not None:
            self.reducer.ready(param)
        elif self._reached is not None:
            self._reached.add(id(param))

    def reduce(self) -> list[Tensor]:
        """Data parallel: .grad = Σ_r release_r for this step (waits for the all-reduces); the parameters written.
        One process: the noise-only releases of a noisy release made outside a backward (none are left otherwise)."""
        if self.reducer is not None:
            return self.reducer.finish()
        return self.release_absent() if self._reached is not None else []

    def untrack(self) -> None:
        """Stop guarding the parameters (called when the DP model that owns this engine is collected; by hand for a
        dpcompile.backend()'s, which Dynamo's caches keep alive, to train its model without DP afterwards)."""
        guard.untrack(self)

    # --- dropped samples ---

    def _count_dropped(self, dropped: Tensor) -> None:
        """Add this backward's dropped samples on their device (no host sync)."""
        key = str(dropped.device)
        total = self._dropped.get(key)
        dropped = dropped.detach().to(torch.int64)
        self._dropped[key] = dropped.clone() if total is None else total + dropped

    @property
    def dropped_samples(self) -> int:
        """Samples whose norm was not finite (NaN/inf), so their clip factor was 0: reads the device counter."""
        total = self._dropped_saved + sum(int(t.item()) for t in self._dropped.values())
        if total and not self._dropped_warned:
            self._dropped_warned = True
            message = (f"{total} sample(s) had a non-finite gradient norm, or one whose floating-point underflow alone "
                       "could reach the clipping bound, and were dropped from their step (clip factor 0); check the "
                       "data for NaN/inf or extreme values" + ("; with batch_bucket, the all-zero samples that pad a "
                       "batch count here where the model gives NaN for them (they add nothing to the release either "
                       "way)" if self.config.batch_bucket else ""))
            logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return total

    def _warn_dropped(self) -> None:
        """Read the dropped-sample counter (and warn once if non-zero) at a point where a sync is acceptable."""
        if not self._dropped_warned:
            self.dropped_samples

    # --- accounting ---

    @property
    def noise_multiplier(self) -> float:
        """σ: the noise std is σ·R (calibrated when the model was made from a target ε)."""
        return self.config.noise_multiplier

    @property
    def max_grad_norm(self) -> float:
        """R: every sample's clipped gradient has norm ≤ R."""
        return self.config.max_grad_norm

    @property
    def steps(self) -> int:
        """Logical (noisy) steps taken so far."""
        return self.draws

    def epsilon(self, delta: float | None = None) -> float:
        """ε spent so far at δ (default: target_delta): the accountant over `steps` Poisson Gaussian steps."""
        delta = self.target_delta if delta is None else delta
        if delta is None:
            raise ConfigError("epsilon needs a delta: pass epsilon(delta=...) or dpcompile(target_delta=...)")
        if self.sample_rate is None:
            raise ConfigError("the sample rate is unknown, so epsilon cannot be computed: pass "
                              "dpcompile(sample_rate=...) or data_loader=poisson_loader(...)")
        self._sync()
        self._warn_dropped()
        if self.planned_steps is not None and self.steps > self.planned_steps:
            logger.warning("%d steps taken, more than the %d that noise_multiplier was calibrated for: "
                           "epsilon is above the target", self.steps, self.planned_steps)
        return self.accountant.epsilon(delta)

    def _sync(self) -> None:
        """Record the noisy steps drawn since the last sync."""
        new = self.steps - self.accountant.steps
        if new > 0 and self.sample_rate is not None:
            self.accountant.record(self.noise_multiplier, self.sample_rate, new)

    # --- accumulation ---

    @contextlib.contextmanager
    def accumulating(self) -> Iterator[None]:
        """Backward passes inside add no noise and count no step (nor towards gradient_accumulation_steps):
        the micro-steps of a logical batch; the backward after the block adds the noise once."""
        saved, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = saved

    def drop_accumulated(self) -> None:
        """Drop an incomplete logical batch: its clipped sums (.grad set to None) and its micro-step count."""
        self.calls -= self.calls % self.every
        self._micro_position = self._rows_in = None
        guard.drop(self)

    def attach(self, data_loader: Any) -> None:
        """Take q from a Poisson loader (or check it) and keep its sampler position in state_dict()."""
        sampler = poisson_sampler_of(data_loader)
        if sampler is None:
            raise ConfigError("attach() takes a poisson_loader or a DataLoader with a PoissonBatchSampler")
        if self.sample_rate is None and self.steps > 0:
            raise ConfigError("steps were taken with no sample rate; attach the loader before training")
        sample_rate = sample_rate_of(self.sample_rate, sampler)
        check_normaliser(self.config)
        check_shard(sampler, self.rank, self.world_size)
        if self.world_size > 1:  # every rank attaches (a collective): the rates must agree, as at creation
            distributed.check_same_settings({**self.fingerprint(), "sample_rate": sample_rate})
        if sampler is not self.sampler and seeds_of(sampler) & self._sampler_seeds:
            raise ConfigError(
                f"the loader attached samples with seed {sampler.seed}, as a loader this DP model was given before: it "
                "would draw the same batches again, which the accountant counts as fresh Poisson samples. Make the "
                "loader once and keep it for every epoch, or give each loader a seed of its own (or none)")
        self._sampler_seeds |= seeds_of(sampler)
        self.sampler, self.sample_rate = sampler, sample_rate
        self.rebase_batches()

    # --- resumable state ---

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share to be resumed by this engine."""
        c = self.config
        return {"noise_multiplier": c.noise_multiplier, "max_grad_norm": c.max_grad_norm,
                "sample_rate": self.sample_rate, "loss_reduction": c.loss_reduction,
                "expected_batch_size": c.expected_batch_size, "clipping": c.clipping,
                "clip_stability": c.clip_stability if c.clipping == "automatic" else None,
                "clip_groups": [list(g) for g in c.clip_groups] if c.clip_groups else None,
                "clip_group_norms": list(c.clip_group_norms) if c.clip_group_norms else None,
                "accountant": self.accountant.mechanism, "secure_noise": c.secure_noise,
                "gradient_accumulation_steps": self.gradient_accumulation_steps}

    def noise_state(self) -> dict[str, Any]:
        """Counters, seed and generator states; in secure mode the counters only (a saved seed or
        generator state would reveal the noise of every later step)."""
        counts = {"draws": self.draws, "calls": self.calls}
        if self.secure:
            return counts
        return {**counts, "seed": self.seed, "generators": {k: g.get_state() for k, g in self.generators.items()}}

    def load_noise_state(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where a saved engine stopped (secure mode: counters only, fresh entropy)."""
        self.draws, self.calls = int(state["draws"]), int(state.get("calls", state["draws"] * self.every))
        if self.secure:
            return
        self.seed = state["seed"]
        self.generators = {}
        for key, gen_state in state["generators"].items():
            self.generator(torch.device(key)).set_state(gen_state.cpu())  # states are CPU tensors

    def state_dict(self) -> dict[str, Any]:
        """Plain data (torch.load(weights_only=True) reads it): settings, step count, accountant
        history, noise counters and generator states, Poisson sampler position, dropped samples."""
        self._sync()
        if self.calls % self.gradient_accumulation_steps:
            logger.warning("state saved in the middle of a logical step (%d of %d micro-steps): the "
                           "accumulated .grad is not part of it", self.calls % self.gradient_accumulation_steps,
                           self.gradient_accumulation_steps)
        own = {"sampler": self.sampler.state_dict() if self.sampler is not None else None,
               "dropped": self.dropped_samples}
        state = {"version": STATE_VERSION, "config": self.fingerprint(), "steps": self.steps,
                 "accountant": self.accountant.state_dict(), "noise": self.noise_state(),
                 "parameters": self.parameters_hash(), **own}
        return state if self.world_size == 1 else self.gathered_state(state)

    def gathered_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Data parallel (a collective): rank 0's state, "ranks" = every rank's own part, "dropped" = Σ_r dropped_r."""
        parts = distributed.gather({key: state[key] for key in ("noise", *RANK_KEYS)})
        ranks = [{key: part[key] for key in RANK_KEYS} for part in parts]
        return {**state, "noise": parts[0]["noise"], "sampler": ranks[0]["sampler"],
                "dropped": sum(part["dropped"] for part in ranks), "ranks": ranks}

    def parameters_hash(self) -> str:
        """SHA-256 of the trainable parameters this engine guards (names and bytes, in name order)."""
        digest = hashlib.sha256()
        for name, p in sorted(guard.guarded_params(self), key=lambda item: item[0]):
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def check_parameters(self) -> None:
        """At the first release after load_state_dict(): the parameters must be the ones saved with the state. Until
        they are, every release is refused (a retry after the refusal would otherwise train on and repeat the noise)."""
        if self._parameters_saved is not None and self._parameters_saved != self.parameters_hash():
            raise ConfigError(
                "the privacy state loaded was saved with other model parameters: its step count, accountant and "
                "noise generator belong to those, so training these would under-count the privacy spent and repeat "
                "noise already drawn. Load the model's state_dict saved together with this privacy state (before "
                "the next release: until then every release of this DP model is refused); if the parameters were "
                "changed on purpose, make a new DP model and do not load the privacy state")
        self._parameters_saved = None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from state_dict() of an engine with the same settings; refuse any other (ConfigError)."""
        if not isinstance(state, Mapping) or "version" not in state:
            raise ConfigError(f"not a privacy engine state: expected a dict with keys {sorted(STATE_KEYS)}")
        if state["version"] not in VERSION_KEYS:
            raise ConfigError(f"privacy state version {state['version']!r}; this dpcompile reads {sorted(VERSION_KEYS)}")
        keys = VERSION_KEYS[state["version"]]
        if set(state) - {"ranks"} != keys:
            raise ConfigError(f"not a privacy engine state: expected a dict with keys {sorted(keys)}")
        check_same_settings(state["config"], self.fingerprint())
        if state["steps"] < self.draws:
            raise ConfigError(
                f"this DP model has already released {self.draws} noisy step(s); a privacy state of "
                f"{state['steps']} would count fewer steps than were taken and draw the same noise again (on other "
                "data, which a difference of two releases would show without noise). Resume a saved run in a fresh "
                "DP model, with the model parameters saved together with this state")
        own = self.own_part(state)
        if (own["sampler"] is None) != (self.sampler is None):
            saved, here = ("a", "no") if self.sampler is None else ("no", "a")
            raise ConfigError(f"the checkpoint has {saved} Poisson sampler position but this model has {here} "
                              "data loader: pass the same data_loader= as the saved run")
        steps = state["steps"]
        if state["noise"]["draws"] != steps:
            raise ConfigError(f"corrupt privacy state: {steps} steps but {state['noise']['draws']} noise draws")
        accountant = Accountant(self.accountant.mechanism)
        accountant.load_state_dict(state["accountant"])
        if accountant.steps not in (0, steps) or self.sample_rate is not None and accountant.steps != steps:
            raise ConfigError(f"corrupt privacy state: {steps} steps but {accountant.steps} in the accountant")
        if self.sampler is not None:
            self.sampler.load_state_dict(own["sampler"])
        noise = state["noise"] if self.rank == 0 or self.secure else {**state["noise"], "generators": {}}
        self.load_noise_state(noise)  # rank 0's; the other ranks draw none (no generator on rank 0's device)
        self.accountant = accountant
        self._dropped, self._dropped_saved = {}, int(own.get("dropped", 0))
        self._parameters_saved = state.get("parameters")  # checked at the next release (the model may load after)
        self.generation += 1  # micro-step sums held from before belong to no step of the loaded state
        self.rebase_batches()

    def own_part(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        """This rank's sampler position and dropped count in a saved state (saved by as many ranks as run now)."""
        ranks = state.get("ranks")
        saved = 1 if ranks is None else len(ranks) if isinstance(ranks, list) else None
        if saved != self.world_size:
            raise ConfigError(f"the privacy state was saved by {saved} data-parallel rank(s) and this run has "
                              f"{self.world_size}: each rank resumes its own Poisson shard, so resume with the "
                              "saved number of ranks")
        own = state if ranks is None else ranks[self.rank]
        if not isinstance(own, Mapping) or not RANK_KEYS <= set(own) | {"dropped"}:
            raise ConfigError(f"not a privacy engine state: each entry of 'ranks' needs keys {sorted(RANK_KEYS)}")
        return own

    # --- copies ---

    def __reduce_ex__(self, protocol):
        raise DPCompileError(COPY_MESSAGE)

    def __deepcopy__(self, memo):
        raise DPCompileError(COPY_MESSAGE)

    def __repr__(self) -> str:
        return (f"PrivacyEngine(noise_multiplier={self.noise_multiplier:.6g}, max_grad_norm={self.max_grad_norm}, "
                f"sample_rate={self.sample_rate}, steps={self.steps}, accountant={self.accountant.mechanism!r})")


COPY_MESSAGE = ("a DP model and its privacy engine cannot be copied, pickled or saved whole: a copy would share "
                "or fork the noise source and step count. Save dp_model.state_dict() and "
                "dp_model.privacy.state_dict(), and load them into a new dpcompile(...) model with the same settings. "
                "A module compiled with dpcompile.backend(...): copy the module it wraps (copy.deepcopy(run._orig_mod)) "
                "for an EMA or teacher copy, which trains without DP unless compiled again with a backend of its own")


def check_same_settings(saved: Mapping[str, Any], current: dict[str, Any]) -> None:
    """ConfigError naming every setting in which a checkpoint differs from this run."""
    if not isinstance(saved, Mapping):
        raise ConfigError("not a privacy engine state: 'config' must be a dict")
    keys = sorted(set(saved) | set(current))
    diffs = [f"{k}: saved {saved.get(k, '<absent>')!r}, here {current.get(k, '<absent>')!r}"
             for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]
    if diffs:
        raise ConfigError("the checkpoint was saved with other privacy settings (" + "; ".join(diffs) +
                          "); resuming would misstate the privacy spent. Create the model with the saved settings")


def check_accumulation(k: Any, config: DPConfig) -> None:
    """k must be a positive integer; a 'mean' loss accumulated over k > 1 micro-batches needs a fixed n."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"gradient_accumulation_steps must be a positive integer, got {k!r}")
    if k > 1 and config.loss_reduction == "mean" and config.expected_batch_size is None:
        raise ConfigError("gradient accumulation with loss_reduction='mean' needs expected_batch_size (the "
                          "logical batch size, divided by once per logical step), or loss_reduction='sum'")


def check_normaliser(config: DPConfig) -> None:
    """With Poisson sampling the batch size is private: a 'mean' loss must divide by a fixed size."""
    if config.loss_reduction == "mean" and config.expected_batch_size is None:
        raise ConfigError("with Poisson sampling and loss_reduction='mean' the gradient must be divided by the "
                          "expected batch size q·N, not by the (private) actual batch size: pass "
                          "expected_batch_size=round(sample_rate * len(dataset)), data_loader=poisson_loader(...), "
                          "or loss_reduction='sum'")


def check_shard(sampler: PoissonBatchSampler | None, rank: int, world_size: int) -> None:
    """A Poisson sampler must draw this rank's shard of the process group: a sampler made for another rank or
    before the group existed would let ranks draw the same samples (a sample counted several times)."""
    if sampler is not None and (sampler.rank, sampler.world_size) != (rank, world_size):
        raise ConfigError(
            f"the Poisson loader samples for rank {sampler.rank} of {sampler.world_size}, but this process is rank "
            f"{rank} of {world_size}: create poisson_loader(...) after torch.distributed.init_process_group(), "
            "with the default rank and world_size")


def seeds_of(sampler: PoissonBatchSampler | None) -> set[int]:
    """{the sampler's seed}, or none for no sampler or a secure one (it reseeds from OS entropy every epoch)."""
    return set() if sampler is None or sampler.secure else {sampler.seed}


def attached_at(sampler: PoissonBatchSampler | None) -> tuple[int, int]:
    """(the sampler's stream of handed batches, where the loop before its latest started): a DP model attached now
    trains on that loop's batches or later ones; (0, 0) where none tells."""
    handed = None if sampler is None else sampler.handed()
    return (0, 0) if handed is None else (handed[0], sampler.loop_start(sampler.latest_loop() - 1))


def batches_drawn(sampler: PoissonBatchSampler | None) -> int:
    """How many batches the sampler has handed out in all (its epochs advance only once finished)."""
    return 0 if sampler is None else sampler.epoch * sampler.steps + sampler._step


def poisson_sampler_of(data_loader: Any) -> PoissonBatchSampler | None:
    """The PoissonBatchSampler of a loader (or the sampler itself); None for None or another loader."""
    if data_loader is None or isinstance(data_loader, PoissonBatchSampler):
        return data_loader
    sampler = getattr(data_loader, "batch_sampler", None)
    if isinstance(sampler, PoissonBatchSampler):
        return sampler
    logger.warning("data_loader does not sample with a PoissonBatchSampler; the accountant assumes Poisson "
                   "sampling at sample_rate, so epsilon is only an estimate for this loader")
    return None


def sample_rate_of(sample_rate: float | None, sampler: PoissonBatchSampler | None) -> float | None:
    """q from the argument or the loader's sampler; they must agree."""
    if sample_rate is not None:
        real = isinstance(sample_rate, numbers.Real) and not isinstance(sample_rate, bool)
        if not (real and 0 < sample_rate <= 1):
            raise ConfigError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
        sample_rate = float(sample_rate)
    if sampler is None:
        return None if sample_rate is None else float(sample_rate)
    if sample_rate is not None and not math.isclose(sample_rate, sampler.sample_rate, rel_tol=1e-12):
        raise ConfigError(f"sample_rate={sample_rate} but the data loader samples at {sampler.sample_rate}")
    return sampler.sample_rate


def dataset_size(data_loader: Any, sampler: PoissonBatchSampler | None) -> int | None:
    """N, the number of examples the loader (or its Poisson sampler) samples from; None if unknown."""
    if sampler is not None:
        return sampler.num_samples
    try:
        return len(data_loader.dataset)
    except (AttributeError, TypeError):
        return None


def resolve_noise(*, noise_multiplier: float | None, target_epsilon: float | None, target_delta: float | None,
                  sample_rate: float | None, epochs: float | None, steps: int | None,
                  accountant: str) -> tuple[float, int | None]:
    """(σ, steps it was calibrated for): σ as given, or the smallest σ with ε(steps) ≤ target_epsilon."""
    if target_epsilon is None:
        if noise_multiplier is None:
            raise ConfigError("pass noise_multiplier, or target_epsilon (with target_delta, sample_rate and "
                              "epochs or steps) to calibrate it")
        if epochs is not None or steps is not None:
            raise ConfigError("epochs and steps only serve to calibrate noise_multiplier from target_epsilon")
        return noise_multiplier, None
    if noise_multiplier is not None:
        raise ConfigError("pass either noise_multiplier or target_epsilon (which calibrates it), not both")
    if target_delta is None or sample_rate is None or (epochs is None) == (steps is None):
        raise ConfigError("calibrating noise_multiplier from target_epsilon needs target_delta, sample_rate "
                          "(or a poisson data_loader) and exactly one of epochs or steps")
    steps = steps_for(epochs, sample_rate) if epochs is not None else steps
    sigma = calibrate_noise_multiplier(target_epsilon, target_delta, sample_rate, steps, mechanism=accountant)
    logger.info("noise_multiplier=%.6g reaches epsilon<=%g at delta=%g after %d steps at q=%g",
                sigma, target_epsilon, target_delta, steps, sample_rate)
    return sigma, steps
