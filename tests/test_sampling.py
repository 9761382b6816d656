"""Poisson batch sampler and loader: inclusion rate, empty batches, reproducibility, resumption."""
import io
import math

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from dpcompile.errors import ConfigError
from dpcompile.privacy.sampling import PoissonBatchSampler, poisson_loader


def test_inclusion_rate_and_varying_sizes():
    n, q, steps = 1000, 0.1, 200
    batches = list(PoissonBatchSampler(n, q, steps=steps, seed=0))
    assert len(batches) == steps
    counts = torch.zeros(n)
    for b in batches:
        assert b == sorted(set(b)) and all(0 <= i < n for i in b)
        counts[b] += 1
    total, expected = counts.sum().item(), n * q * steps
    assert abs(total - expected) < 5 * math.sqrt(expected * (1 - q))
    assert (counts > 0).all()  # each index is drawn about 20 times
    assert len({len(b) for b in batches}) > 10


def test_default_steps_is_one_expected_epoch():
    assert len(PoissonBatchSampler(100, 0.01)) == 100
    assert len(PoissonBatchSampler(100, 0.3)) == 3
    assert len(PoissonBatchSampler(100, 1.0)) == 1
    assert next(iter(PoissonBatchSampler(7, 1.0, seed=0))) == list(range(7))


def test_empty_batches_have_right_shapes():
    data = TensorDataset(torch.randn(10, 3, 4), torch.arange(10))
    batches = list(poisson_loader(data, 0.01, steps=40, seed=0))
    assert len(batches) == 40
    empty = [b for b in batches if b[0].shape[0] == 0]
    assert empty, "with q=0.01 and 10 samples most batches are empty"
    x, y = empty[0]
    assert x.shape == (0, 3, 4) and x.dtype == torch.float32
    assert y.shape == (0,) and y.dtype == torch.int64
    full = [b for b in batches if b[0].shape[0] > 0]
    assert all(type(b) is type(empty[0]) for b in full)


class Items(Dataset):
    """Samples as (tensor, int, float) tuples and as dicts, to check the empty collate."""

    def __init__(self, as_dict=False):
        self.as_dict = as_dict

    def __len__(self):
        return 5

    def __getitem__(self, i):
        x, y, w = torch.full((2,), float(i), dtype=torch.float16), i, 0.5
        return {"x": x, "y": y, "w": w, "name": f"s{i}"} if self.as_dict else (x, y, w)


def test_empty_batch_of_python_scalars_and_dicts():
    x, y, w = next(iter(poisson_loader(Items(), 1e-9, steps=1, seed=0)))
    assert (x.shape, x.dtype, y.shape, y.dtype, w.shape, w.dtype) == (
        (0, 2), torch.float16, (0,), torch.int64, (0,), torch.float64)
    batch = next(iter(poisson_loader(Items(as_dict=True), 1e-9, steps=1, seed=0)))
    assert batch["x"].shape == (0, 2) and batch["y"].shape == (0,) and batch["name"] == []
    full = next(iter(poisson_loader(Items(as_dict=True), 1.0, seed=0)))
    assert full["x"].shape == (5, 2) and full["name"] == [f"s{i}" for i in range(5)]


def test_reproducible_with_seed():
    a = list(PoissonBatchSampler(50, 0.2, steps=20, seed=3))
    b = list(PoissonBatchSampler(50, 0.2, steps=20, seed=3))
    c = list(PoissonBatchSampler(50, 0.2, steps=20, seed=4))
    assert a == b and a != c


def test_secure_streams_differ():
    a = list(PoissonBatchSampler(50, 0.2, steps=20, secure=True))
    b = list(PoissonBatchSampler(50, 0.2, steps=20, secure=True))
    assert a != b
    sampler = PoissonBatchSampler(50, 0.2, steps=20, secure=True)
    assert list(sampler) != list(sampler)  # reseeded from OS entropy every epoch
    assert list(PoissonBatchSampler(50, 0.2, steps=20)) != list(PoissonBatchSampler(50, 0.2, steps=20))


def test_resume_mid_epoch_equals_uninterrupted():
    reference = PoissonBatchSampler(100, 0.1, steps=10, seed=7)
    uninterrupted = list(reference) + list(reference)  # two epochs
    first = PoissonBatchSampler(100, 0.1, steps=10, seed=7)
    it = iter(first)
    head = [next(it) for _ in range(4)]
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = PoissonBatchSampler(100, 0.1, steps=10, seed=99)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert head + list(resumed) + list(resumed) == uninterrupted
    assert resumed.state_dict()["epoch"] == 1


def test_resume_through_loader():
    data = TensorDataset(torch.arange(30.0))
    reference = [b[0].tolist() for b in poisson_loader(data, 0.2, steps=8, seed=1)]
    loader = poisson_loader(data, 0.2, steps=8, seed=1)
    it = iter(loader)
    head = [next(it)[0].tolist() for _ in range(3)]
    state = loader.batch_sampler.state_dict()
    assert state["step"] == 3
    again = poisson_loader(data, 0.2, steps=8)
    again.batch_sampler.load_state_dict(state)
    assert head + [b[0].tolist() for b in again] == reference


@pytest.mark.parametrize("kwargs", [dict(num_samples=0, sample_rate=0.1), dict(num_samples=10, sample_rate=0.0),
                                    dict(num_samples=10, sample_rate=1.5), dict(num_samples=10, sample_rate=-0.1),
                                    dict(num_samples=10, sample_rate=0.1, steps=0),
                                    dict(num_samples=10, sample_rate=0.1, seed=1, secure=True)])
def test_sampler_refusals(kwargs):
    with pytest.raises(ConfigError):
        PoissonBatchSampler(**kwargs)


@pytest.mark.parametrize("other", [dict(num_samples=11, sample_rate=0.1, steps=5),
                                   dict(num_samples=10, sample_rate=0.2, steps=5),
                                   dict(num_samples=10, sample_rate=0.1, steps=6)])
def test_load_refuses_other_configuration(other):
    state = PoissonBatchSampler(10, 0.1, steps=5, seed=0).state_dict()
    with pytest.raises(ConfigError):
        PoissonBatchSampler(**other, seed=0).load_state_dict(state)
    with pytest.raises(ConfigError):
        PoissonBatchSampler(10, 0.1, steps=5).load_state_dict({"seed": 0})


def test_loader_refusals():
    data = TensorDataset(torch.arange(10.0))
    with pytest.raises(ConfigError):
        poisson_loader(data, 0.1, batch_size=4)
    with pytest.raises(ConfigError):
        poisson_loader(data, 0.1, shuffle=True)
    with pytest.raises(ConfigError):
        poisson_loader(TensorDataset(torch.zeros(0)), 0.1)


def test_a_secure_checkpoint_holds_no_seed_and_resumes():
    """secure=True: the checkpoint held the first epoch's seed, from which its reader regenerated every batch of
    that epoch. Now it holds none (only the generator state, which the rest of the current epoch needs), and a
    sampler loaded from it continues the epoch exactly."""
    sampler = PoissonBatchSampler(50, 0.2, steps=6, secure=True)
    stream = iter(sampler)
    first = [next(stream) for _ in range(3)]
    state = sampler.state_dict()
    assert state["seed"] is None
    rest = list(stream)
    resumed = PoissonBatchSampler(50, 0.2, steps=6, secure=True)
    resumed.load_state_dict(state)
    assert list(resumed) == rest
    replay = PoissonBatchSampler(50, 0.2, steps=6, seed=sampler.seed)  # what the seed would have given away
    assert list(replay)[:3] == first
