"""Poisson sampling: every example joins each batch independently with probability q."""
from __future__ import annotations

import collections
import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from numbers import Integral, Real
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..errors import ConfigError

logger = logging.getLogger(__name__)

_CONFIG_KEYS = ("num_samples", "sample_rate", "steps")


def _fixed(name: str, doc: str) -> property:
    """A setting a sampler keeps for life (read-only): the accountant and the data-parallel shards are made from it,
    and a change after they were (q raised to 1, a rank moved) would spend privacy that nothing counts."""
    return property(lambda self: getattr(self, "_" + name), doc=doc)


class PoissonBatchSampler(Sampler[list[int]]):
    """Yields `steps` batches of indices per epoch, each index included with probability `sample_rate`.

    With `seed` the batches are reproducible. `secure=True` seeds from OS entropy (`secrets`) and
    reseeds at every new epoch, so the stream is not reproducible; without either a seed is still
    drawn from OS entropy once and kept in `state_dict()`. The generator is torch's Mersenne
    Twister: a saved state reveals the batches that follow, so keep checkpoints private.
    Batches are drawn lazily; `state_dict()` counts the batches handed out, so with a DataLoader
    that prefetches (num_workers > 0) it runs ahead of the training loop.
    Data parallel (`rank`, `world_size`; default: torch.distributed's): this sampler draws only the
    examples rank, rank + W, rank + 2W, … (each still with probability q, from a generator of its own),
    so the union of the ranks' batches is a Poisson sample of all num_samples examples.
    """

    num_samples = _fixed("num_samples", "N, the size of the whole dataset (of every rank's shards)")
    sample_rate = _fixed("sample_rate", "q, the probability that an example joins a batch")
    rank = _fixed("rank", "the data-parallel rank whose shard this sampler draws")
    world_size = _fixed("world_size", "the number of data-parallel ranks")

    def __init__(self, num_samples: int, sample_rate: float, steps: int | None = None,
                 seed: int | None = None, secure: bool = False, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, Integral) or num_samples <= 0:
            raise ConfigError(f"num_samples must be a positive integer, got {num_samples!r}")
        if not (isinstance(sample_rate, Real) and 0 < sample_rate <= 1):
            raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if steps is None:
            steps = max(1, round(1 / sample_rate))
        if isinstance(steps, bool) or not isinstance(steps, Integral) or steps <= 0:
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        if secure and seed is not None:
            raise ConfigError("secure=True draws its seed from OS entropy; pass either seed or secure=True, not both")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, Integral)):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self._num_samples, self._sample_rate, self.steps = int(num_samples), float(sample_rate), int(steps)
        self._rank, self._world_size = shard_of(rank, world_size)
        self.secure = secure
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self.epoch, self._step = 0, 0
        self._generator = torch.Generator().manual_seed(stream_seed(self.seed, "sampler", self.rank))
        # PoissonLoader loops (None: none tells): the sizes of the batches the latest drew and did not yet hand out,
        # of the last MAX_HANDED the loops handed out (a stream, in order), and how many they handed out in all.
        self._drawn: collections.deque[int] | None = None
        self._handed: collections.deque[int] | None = None
        self._handed_total = 0
        self._loops = 0  # PoissonLoader loops started over this sampler: the latest one tells
        self._streams = 0  # streams of handed batches (a loop that does not tell ends one)
        # the latest loops: where in the stream they start, and the thread that started them
        self._starts: dict[int, tuple[int, threading.Thread]] = {}
        self._first_loop = 0  # the stream's first loop
        # The thread that drew the last batch: the loader's consumer, the training loop's thread or a background
        # prefetcher's (whose position and count run ahead of the loop by its queue, at times of its own).
        self.drawn_in: threading.Thread | None = None
        logger.debug("PoissonBatchSampler(n=%d, q=%g, steps=%d, secure=%s)", num_samples, sample_rate, steps, secure)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        """Continue the current epoch, or start a new one if the last one is finished."""
        if self._step >= self.steps:
            self.epoch, self._step = self.epoch + 1, 0
            if self.secure:
                self._generator.manual_seed(secrets.randbits(63))
        shard = torch.arange(self.rank, self.num_samples, self.world_size)
        while self._step < self.steps:
            mask = torch.rand(len(shard), generator=self._generator) < self.sample_rate
            self._step += 1
            self.drawn_in = threading.current_thread()  # (an object: a finished thread's ident is reused)
            batch = shard[mask].tolist()
            if self._drawn is not None:
                self._drawn.append(len(batch))
            yield batch

    def start_loop(self) -> int:
        """A PoissonLoader's loop starts; its batches join the stream of those the sampler's loops handed out (one
        stream across loops and epochs: a prefetcher may start the next loop while the last one's batches still wait
        in its queue). Returns the loop's number."""
        self._loops += 1
        self._drawn = collections.deque()  # (what a dropped loop drew and never handed out is no batch of the stream)
        if self._handed is None:  # no stream yet, or one broken: a new one
            self._streams += 1
            self._handed, self._handed_total, self._starts = collections.deque(maxlen=MAX_HANDED), 0, {}
            self._first_loop = self._loops
        self._starts = {loop: start for loop, start in self._starts.items() if loop > self._loops - KEPT_LOOPS}
        self._starts[self._loops] = self._handed_total, threading.current_thread()
        return self._loops

    def hand_out(self, loop: int) -> None:
        """Loop `loop` hands its next batch (the oldest drawn: a DataLoader in order hands them out as drawn,
        however far its workers prefetch) to its consumer: the training loop, or a prefetcher that hands them on in
        the same order. An earlier loop still handing out batches (one iterated while another was started, e.g.
        next(iter(loader)) inside the loop) breaks the stream: its order is no longer the loop's."""
        if loop != self._loops:
            self._drawn = self._handed = None
        elif self._drawn and self._handed is not None:
            self._handed.append(self._drawn.popleft())
            self._handed_total += 1

    def untold_loop(self) -> None:
        """A loop that does not tell what it hands out (out of order) starts: the stream is broken."""
        self._loops += 1
        self._drawn = self._handed = None

    def handed(self) -> tuple[int, int] | None:
        """(the stream's number, how many batches its loops handed out), None where no PoissonLoader's loop tells."""
        return None if self._handed is None else (self._streams, self._handed_total)

    def latest_loop(self) -> int:
        """The number of the loop started last."""
        return self._loops

    def loop_start(self, loop: int) -> int:
        """Where in the stream loop `loop` started (the oldest kept loop's start for one not kept)."""
        return self._starts[loop][0] if loop in self._starts else min((v[0] for v in self._starts.values()), default=0)

    def run_start(self) -> int | None:
        """Where in the stream the latest run of loops started in one thread begins: the loops whose batches may
        still be in use where a prefetcher's thread hands them on (a thread iterating the loader epoch after epoch
        may have started the next loop while the last one's batches wait in its queue; a prefetcher made anew for
        each epoch, or an evaluation pass, starts its loop in a thread of its own). None if the run goes back past
        the loops kept. (Asked only while a stream is told: its latest loop is kept.)"""
        loop = self._loops
        thread = self._starts[loop][1]
        while loop - 1 in self._starts and self._starts[loop - 1][1] is thread:
            loop -= 1
        return self._starts[loop][0] if loop - 1 in self._starts or loop == self._first_loop else None

    def largest_from(self, index: int) -> int | None:
        """The most samples of a batch the stream holds as its `index`-th (from 0) or later: the batch a DP model
        is on, if it consumed `index` batches by noisy releases (one each). From the oldest kept where `index` is
        older (a batch handed out more than MAX_HANDED batches ago is not looked for); None if none is left."""
        if self._handed is None or index >= self._handed_total:
            return None
        return max(list(self._handed)[max(0, index - (self._handed_total - len(self._handed))):])

    def state_dict(self) -> dict[str, Any]:
        """Configuration, position within the epoch and generator state. Secure: no seed (the first epoch's seed
        would let a checkpoint's reader regenerate that epoch's batches; the generator state reveals only the rest
        of the current epoch, which resuming needs)."""
        return {"num_samples": self.num_samples, "sample_rate": self.sample_rate, "steps": self.steps,
                "seed": None if self.secure else self.seed, "secure": self.secure, "epoch": self.epoch,
                "step": self._step,
                "generator_state": self._generator.get_state(), "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()` of a sampler with the same num_samples, sample_rate and steps."""
        missing = {*_CONFIG_KEYS, "seed", "step", "generator_state"} - set(state)
        if missing:
            raise ConfigError(f"not a PoissonBatchSampler state: missing {sorted(missing)}")
        for key in _CONFIG_KEYS:
            if state[key] != getattr(self, key):
                raise ConfigError(f"sampler state has {key}={state[key]!r} but this sampler has "
                                  f"{key}={getattr(self, key)!r}; create the sampler with the saved setting")
        shard = (state.get("rank", 0), state.get("world_size", 1))
        if shard != (self.rank, self.world_size):
            raise ConfigError(f"sampler state is of rank {shard[0]} of {shard[1]}, this sampler is rank {self.rank} of "
                              f"{self.world_size}: each rank resumes from its own sampler state")
        if not 0 <= state["step"] <= self.steps:
            raise ConfigError(f"sampler state step {state['step']!r} is outside [0, {self.steps}]")
        self._generator.set_state(state["generator_state"].cpu())  # also when loaded with map_location="cuda"
        self.seed = self.seed if state["seed"] is None else state["seed"]
        self._step = state["step"]
        self.epoch = state.get("epoch", 0)


def shard_of(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else torch.distributed's default group's, else (0, 1)."""
    from .distributed import world
    default_rank, default_size = world()
    rank = default_rank if rank is None else rank
    world_size = default_size if world_size is None else world_size
    if not (isinstance(world_size, Integral) and world_size >= 1 and isinstance(rank, Integral) and 0 <= rank < world_size):
        raise ConfigError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    return int(rank), int(world_size)


def stream_seed(seed: int, stream: str, index: int | str = 0) -> int:
    """The seed of one random stream of its own, derived from a user's seed: SHA-256 of (stream, index, seed).

    One user seed feeds several generators (the Poisson sampler of each rank, the noise on each device). Seeded
    with the same number, two torch generators of one kind draw the same uniforms: the noise of a step was then
    computed from the very uniforms that chose its batch (sample k joins iff u_k < q, and randn turns u_k into a
    noise value), so the release showed who was in the batch. Each stream's seed is a hash of its own."""
    digest = hashlib.sha256(f"dpcompile:{stream}:{index}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


class _PoissonCollate:
    """Collates a batch; an empty batch becomes 0-length tensors shaped like a collated dataset[0]."""

    def __init__(self, dataset: Dataset, collate_fn: Callable[[list], Any]) -> None:
        self.dataset, self.collate_fn, self._empty = dataset, collate_fn, None

    def __call__(self, batch: list) -> Any:
        """Collate `batch`, or build the empty batch."""
        if batch:
            return self.collate_fn(batch)
        if self._empty is None:
            self._empty = _truncate(self.collate_fn([self.dataset[0]]))
        return self._empty


def _truncate(x: Any) -> Any:
    """Cut every tensor in a collated batch to batch size 0, keeping the container types."""
    if isinstance(x, torch.Tensor):
        return x[:0]
    if isinstance(x, Mapping):
        return type(x)({k: _truncate(v) for k, v in x.items()})
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(_truncate(v) for v in x))
    if isinstance(x, (list, tuple)):
        if all(isinstance(v, (str, bytes)) for v in x):
            return type(x)()  # a collated batch of strings
        return type(x)(_truncate(v) for v in x)
    return x


MAX_HANDED = 256  # the sizes of the last batches a PoissonLoader handed out that its sampler keeps
KEPT_LOOPS = 8  # the latest PoissonLoader loops whose start and thread its sampler keeps


class PoissonLoader(DataLoader):
    """A DataLoader over a PoissonBatchSampler that tells the sampler which batches its loop was handed, so that the
    DP model can check that one logical step's backwards hold no more samples than the loop's batch (a batch, or a
    view of it, used twice in one step)."""

    def __iter__(self):
        sampler = self.batch_sampler
        if not getattr(self, "in_order", True):  # batches may come out in another order than drawn: nothing told
            sampler.untold_loop()
            yield from super().__iter__()
            return
        loop = sampler.start_loop()
        for batch in super().__iter__():
            sampler.hand_out(loop)
            yield batch


def poisson_loader(dataset: Dataset, sample_rate: float, *, steps: int | None = None, seed: int | None = None,
                   secure: bool = False, rank: int | None = None, world_size: int | None = None,
                   **dataloader_kwargs: Any) -> DataLoader:
    """DataLoader over Poisson-sampled batches; save `loader.batch_sampler.state_dict()` to resume."""
    clash = {"batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"} & set(dataloader_kwargs)
    if clash:
        raise ConfigError(f"poisson_loader chooses the batches itself; do not pass {sorted(clash)}")
    try:
        num_samples = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError("poisson_loader needs a map-style dataset with a length") from None
    sampler = PoissonBatchSampler(num_samples, sample_rate, steps=steps, seed=seed, secure=secure, rank=rank,
                                  world_size=world_size)
    collate = _PoissonCollate(dataset, dataloader_kwargs.pop("collate_fn", None) or default_collate)
    return PoissonLoader(dataset, batch_sampler=sampler, collate_fn=collate, **dataloader_kwargs)
