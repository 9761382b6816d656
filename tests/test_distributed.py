"""Data parallel over torch.distributed (gloo, 2 processes on CPU): the ranks' releases summed equal one
process's release on the union batch, the noise is added once, settings must agree across ranks."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dpcompile

WORLD, BATCH, R, STEPS = 2, 6, 0.05, 20


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(BATCH, 5, dtype=torch.float64), torch.randn(BATCH, 3, dtype=torch.float64)
    return model, x, y


def loss_of(out, y):
    return (out - y).square().sum(1).mean()


def worker(rank: int, init_file: str, out_dir: str, sigma: float) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model, x, y = model_and_data()
        dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=sigma, backend="eager",
                                 expected_batch_size=BATCH, seed=7)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step only releases (and all-reduces)
        grads = []
        for _ in range(STEPS if sigma else 1):
            opt.zero_grad(set_to_none=True)
            loss_of(dp(x[rank::WORLD]), y[rank::WORLD]).backward()
            opt.step()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        try:
            dpcompile.dpcompile(nn.Linear(2, 2), max_grad_norm=1.0 + rank, noise_multiplier=1.0)
            mismatch = "accepted"
        except dpcompile.ConfigError as exc:
            mismatch = str(exc)
        torch.save({"grads": torch.stack(grads), "steps": dp.privacy.steps, "mismatch": mismatch},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, sigma: float) -> list[dict]:
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), sigma), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


def single_process_grads() -> torch.Tensor:
    model, x, y = model_and_data()
    dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=0.0, backend="eager", expected_batch_size=BATCH)
    loss_of(dp(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_ranks_sum_to_the_union_batch_and_refuse_other_settings(tmp_path):
    results = run_ranks(tmp_path, sigma=0.0)
    expected = single_process_grads()
    for r in results:
        assert torch.allclose(r["grads"][0], expected, rtol=1e-10, atol=0)
        assert r["steps"] == 1
        assert "different privacy settings" in r["mismatch"] and "max_grad_norm" in r["mismatch"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_noise_is_added_once(tmp_path):
    """The released gradient's spread around the noise-free one is σR/n (one draw), not √W·σR/n."""
    sigma = 1.0
    results = run_ranks(tmp_path, sigma=sigma)
    noise = results[0]["grads"] - single_process_grads()
    assert torch.equal(results[0]["grads"], results[1]["grads"])  # every rank applies the same gradient
    ratio = noise.std().item() / (sigma * R / BATCH)
    assert abs(ratio - 1) < 0.15, f"noise std is {ratio:.3f} × σR/n (√{WORLD} would mean one draw per rank)"
    assert results[0]["steps"] == results[1]["steps"] == STEPS
