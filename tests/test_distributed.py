"""Data parallel over torch.distributed (gloo, 2 processes on CPU): the ranks' releases summed (bucketed,
overlapped with the backward) equal one process's release on the union batch, with accumulation, an unused
parameter, a parameter used on one rank only and an empty batch; the noise is added once, also to a parameter
only one rank (or no rank) used; a checkpoint
written by rank 0 resumes both ranks exactly; settings and layouts must agree across ranks."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dpcompile
from dpcompile.privacy.distributed import Reducer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")

WORLD, BATCH, R, NOISE_STEPS = 2, 6, 0.05, 20
TINY_BUCKETS = 1e-4  # MB: about one parameter per bucket, so several all-reduces per step


class Net(nn.Module):
    """An MLP with a parameter no sample uses and one that only ranks with `extra` set use."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
        self.unused = nn.Linear(2, 2)
        self.shift = nn.Parameter(torch.zeros(3))
        self.extra = False

    def forward(self, x):
        out = self.body(x)
        return out + self.shift if self.extra else out


def model_and_data():
    torch.manual_seed(0)
    model = Net().double()
    x, y = torch.randn(BATCH, 5, dtype=torch.float64), torch.randn(BATCH, 3, dtype=torch.float64)
    return model, x, y


def loss_of(out, y):
    return (out - y).square().sum(1).mean()


def grads_of(model) -> dict:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


# --- jobs run on every rank ---

def entry(rank: int, init_file: str, out_dir: str, job: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.save(JOBS[job](rank, out_dir), os.path.join(out_dir, f"{job}{rank}.pt"))
    finally:
        dist.destroy_process_group()


REAL_ALL_REDUCE = dist.all_reduce


def count_all_reduces() -> list:
    """Wrap dist.all_reduce (which the reducer calls) to record each call's element count."""
    calls = []

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return REAL_ALL_REDUCE(tensor, *args, **kwargs)
    dist.all_reduce = counting
    return calls


def release(rank: int, *, overlap=True, micro=1, extra=False, empty_rank=None, redo=False, change=False,
            raw=False, first_micro_extra=False, bucket=None) -> dict:
    """One logical step at lr 0: the released gradient, and the all-reduces issued after each backward. `raw`: rank
    1 also runs the wrapped model on a sample of 1000s directly before its DP backward; `first_micro_extra`: rank 1
    uses `shift` in its first micro-batch only; `bucket`: batch_bucket (each rank's 3 samples padded to 4)."""
    model, x, y = model_and_data()
    model.extra = extra and rank == 1
    dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=0.0, backend="eager", expected_batch_size=BATCH,
                             gradient_accumulation_steps=micro, batch_bucket=bucket)
    dp.privacy.reducer.overlap, dp.privacy.reducer.bucket_mb = overlap, TINY_BUCKETS
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    xs, ys = (x[:0], y[:0]) if rank == empty_rank else (x[rank::WORLD], y[rank::WORLD])
    calls, launched = count_all_reduces(), []
    if redo:  # a noisy backward whose gradient is cleared before any step: its round is dropped
        loss_of(dp(xs), ys).backward()
        opt.zero_grad(set_to_none=True)
    if raw and rank == 1:
        model(torch.full((1, 5), 1e3, dtype=torch.float64)).sum().backward()
    for i, (xb, yb) in enumerate(zip(xs.tensor_split(micro), ys.tensor_split(micro))):
        if first_micro_extra:
            model.extra = rank == 1 and i == 0
        loss_of(dp(xb), yb).backward()
        launched.append(len(calls))
    local = grads_of(model)
    if change:  # the sum is already on its way: a change now would be lost, so the step refuses it
        model.body[0].bias.grad.mul_(2)
    try:
        opt.step()
    except dpcompile.ReleaseError as exc:
        return {"refused": str(exc)}
    return {"grads": grads_of(model), "local": local, "launched": launched, "after_step": len(calls),
            "buckets": len(dp.privacy.reducer.layout[1])}


def exact_job(rank: int, out_dir: str) -> dict:
    """Noise 0: every variant of one step, and the refusals of other settings or another model."""
    results = {name: release(rank, **kwargs) for name, kwargs in VARIANTS.items()}
    try:
        dpcompile.dpcompile(nn.Linear(2, 2), max_grad_norm=1.0 + rank, noise_multiplier=1.0)
        results["mismatch"] = "accepted"
    except dpcompile.ConfigError as exc:
        results["mismatch"] = str(exc)
    model = nn.Linear(2, 2 + rank).double()
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, backend="eager", expected_batch_size=2)
    try:
        dp(torch.randn(2, 2, dtype=torch.float64)).sum().backward()
        results["layout"] = "accepted"
    except dpcompile.ConfigError as exc:
        results["layout"] = str(exc)
    results["backend"] = refusal(lambda: backend_step(rank))
    dp = dpcompile.dpcompile(nn.Linear(2, 2), max_grad_norm=1.0, noise_multiplier=1.0, loss_reduction="sum")
    results["attach"] = refusal(lambda: dp.privacy.attach(dpcompile.poisson_loader(
        torch.utils.data.TensorDataset(torch.arange(8)), sample_rate=0.25 * (1 + rank))))
    results["shard"] = refusal(lambda: dpcompile.dpcompile(
        nn.Linear(2, 2), max_grad_norm=1.0, noise_multiplier=1.0,
        data_loader=dpcompile.poisson_loader(torch.utils.data.TensorDataset(torch.arange(8)), sample_rate=0.5, rank=0, world_size=1)))
    return results


def refusal(fn) -> str:
    """The ConfigError's text, or 'accepted'."""
    try:
        fn()
    except dpcompile.ConfigError as exc:
        return str(exc)
    return "accepted"


def backend_step(rank: int) -> None:
    """dpcompile.backend() under torch.distributed: no DP model sums the ranks' releases, so no release."""
    model = nn.Linear(2, 2).double()
    run = torch.compile(model, fullgraph=True, backend=dpcompile.backend(
        max_grad_norm=1.0, noise_multiplier=1.0, backend="eager", loss_reduction="sum"))
    x = torch.randn(3, 2, dtype=torch.float64)
    torch._dynamo.mark_dynamic(x, 0)
    run(x).sum().backward()


VARIANTS = {"overlap": {}, "no_overlap": {"overlap": False}, "accumulated": {"micro": 2}, "bucketed": {"bucket": 4},
            "extra": {"extra": True}, "empty": {"empty_rank": 0}, "redo": {"redo": True}, "change": {"change": True},
            "raw": {"raw": True}, "first_micro_extra": {"micro": 2, "first_micro_extra": True},
            "first_micro_extra_at_step": {"micro": 2, "first_micro_extra": True, "overlap": False}}


def noise_job(rank: int, out_dir: str) -> dict:
    """σ = 1 at lr 0 on a fixed batch: NOISE_STEPS released gradients."""
    model, x, y = model_and_data()
    dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=1.0, backend="eager",
                             expected_batch_size=BATCH, seed=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    grads = []
    for _ in range(NOISE_STEPS):
        opt.zero_grad(set_to_none=True)
        loss_of(dp(x[rank::WORLD]), y[rank::WORLD]).backward()
        opt.step()
        grads.append(torch.cat([p.grad.flatten() for p in model.body.parameters()]))
    return {"grads": torch.stack(grads), "steps": dp.privacy.steps}


def extra_noise_job(rank: int, out_dir: str) -> dict:
    """σ = 1 at lr 0, `shift` used by rank 1's batch only, `unused` by none: their released gradients."""
    model, x, y = model_and_data()
    model.extra = rank == 1
    dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=1.0, backend="eager",
                             expected_batch_size=BATCH, seed=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    shift, unused = [], []
    for _ in range(NOISE_STEPS):
        opt.zero_grad(set_to_none=True)
        loss_of(dp(x[rank::WORLD]), y[rank::WORLD]).backward()
        opt.step()
        shift.append(model.shift.grad.clone())
        unused.append(model.unused.weight.grad.flatten().clone())
    return {"shift": torch.stack(shift), "unused": torch.stack(unused)}


def training(steps: int, saved: dict | None = None):
    """Noisy DP-SGD with momentum on Poisson shards (q = 1/4 of 24 examples), optionally resumed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    data = torch.utils.data.TensorDataset(torch.randn(24, 5).double(), torch.randn(24, 3).double())
    loader = dpcompile.poisson_loader(data, sample_rate=0.25, steps=8, seed=3)
    dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=1.0, backend="eager", data_loader=loader, seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        dp.privacy.load_state_dict(saved["privacy"])
    batches = iter(loader)
    for _ in range(steps):
        x, y = next(batches)
        loss_of(dp(x), y).backward()
        opt.step()
        opt.zero_grad()
    return model, opt, dp


def resume_job(rank: int, out_dir: str) -> dict:
    """4 steps straight; 2 steps, a checkpoint written by rank 0 alone, 2 more steps from it on both ranks."""
    straight, _, _ = training(4)
    model, opt, dp = training(2)
    privacy = dp.privacy.state_dict()  # a collective: every rank's sampler position
    path = os.path.join(out_dir, "checkpoint.pt")
    if rank == 0:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "privacy": privacy}, path)
    dist.barrier()
    resumed, _, dp = training(2, torch.load(path, weights_only=True))
    return {"straight": straight.state_dict(), "resumed": resumed.state_dict(), "privacy": privacy,
            "steps": dp.privacy.steps}


def noisy_job(rank: int, out_dir: str) -> dict:
    """Both σ = 1 jobs in one process group."""
    return {"noise": noise_job(rank, out_dir), "resume": resume_job(rank, out_dir),
            "extra_noise": extra_noise_job(rank, out_dir)}


JOBS = {"exact": exact_job, "noisy": noisy_job}


def run_job(tmp_path, job: str) -> list[dict]:
    mp.spawn(entry, args=(str(tmp_path / f"init_{job}"), str(tmp_path), job), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"{job}{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """The σ = 1 jobs' results on every rank, and their folder (one spawn for both tests)."""
    folder = tmp_path_factory.mktemp("noisy")
    return run_job(folder, "noisy"), folder


# --- single-process references and checks ---

def union_grads(**kwargs) -> dict:
    """The release of one process on the union of the ranks' batches (noise 0)."""
    model, x, y = model_and_data()
    dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=0.0, backend="eager", expected_batch_size=BATCH,
                             **kwargs)
    loss_of(dp(x), y).backward()
    return grads_of(model)


def assert_same_grads(got: dict, expected: dict) -> None:
    for name, value in expected.items():
        if value is None:
            assert got[name] is None, name
        else:
            assert torch.allclose(got[name], value, rtol=1e-10, atol=1e-18), name


def same(a, b) -> bool:
    """Nested dicts/lists of plain values and tensors, equal."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def test_ranks_sum_to_the_union_batch_overlapped_and_refuse_other_settings(tmp_path):
    ranks = run_job(tmp_path, "exact")
    expected = union_grads()
    assert expected["unused.weight"] is None and expected["shift"] is None
    for r in ranks:
        for variant in ("overlap", "no_overlap", "accumulated", "redo", "bucketed"):
            assert_same_grads(r[variant]["grads"], expected)
        # the empty batch of rank 0 still takes part: the step is rank 1's samples alone
        model, x, y = model_and_data()
        dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=0.0, backend="eager",
                                 expected_batch_size=BATCH)
        loss_of(dp(x[1::WORLD]), y[1::WORLD]).backward()
        assert_same_grads(r["empty"]["grads"], grads_of(model))
        buckets = r["overlap"]["buckets"]
        assert buckets >= 3
        assert r["overlap"]["launched"] == [buckets] == [r["overlap"]["after_step"]]  # all out before the step
        assert r["no_overlap"]["launched"] == [0] and r["no_overlap"]["after_step"] == buckets
        assert r["accumulated"]["launched"] == [0, buckets]  # the last micro-batch's backward alone reduces
        assert r["redo"]["after_step"] == 2 * buckets  # the dropped round was still reduced on every rank
        assert "different privacy settings" in r["mismatch"] and "max_grad_norm" in r["mismatch"]
        assert "different trainable parameters" in r["layout"]
        assert "dpcompile.backend() runs in one process only" in r["backend"]  # else ranks ≠ 0 step un-noised
        assert "samples for rank 0 of 1, but this process is rank" in r["shard"]  # ranks would draw alike
        assert "changed in place between the DP backward and the optimizer step" in r["change"].get("refused", "")
        assert "different privacy settings (sample_rate)" in r["attach"]  # rank 0's ε would count rank 1's q wrong
    # a raw gradient on rank 1 (the wrapped model called directly): refused there, and the sum that holds it, which
    # rank 0 applied (an update of norm 1999 where six samples at R bound it), is refused on rank 0 too
    assert "did not run through the DP model" in ranks[1]["raw"]["refused"]
    assert "a rank refused its part of this step" in ranks[0]["raw"]["refused"]
    # `shift` used by rank 1's first micro-batch alone: its micro-step sum is its release (rank 1 refused the step,
    # "holds clipped per-sample sums without noise", and rank 0 applied None), as in one process over the micro-steps
    model, x, y = model_and_data()
    dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=0.0, backend="eager", expected_batch_size=BATCH,
                             gradient_accumulation_steps=3)
    (x0, x1), (y0, y1) = ([t[r::WORLD].tensor_split(2) for r in range(WORLD)] for t in (x, y))  # rank r's two halves
    for extra, xb, yb in [(False, x0[0], y0[0]), (True, x1[0], y1[0]),
                          (False, torch.cat([x0[1], x1[1]]), torch.cat([y0[1], y1[1]]))]:
        model.extra = extra
        loss_of(dp(xb), yb).backward()
    for r in ranks:
        for variant in ("first_micro_extra", "first_micro_extra_at_step"):
            assert r[variant]["grads"]["shift"] is not None
            assert_same_grads(r[variant]["grads"], grads_of(model))
    for name, value in ranks[0]["overlap"]["grads"].items():  # overlapped = at the step, bit for bit
        assert same(value, ranks[0]["no_overlap"]["grads"][name]), name
    # a parameter only rank 1 uses: every rank applies rank 1's release of it, and Σ_r release_r elsewhere
    local = [r["extra"]["local"] for r in ranks]
    assert local[0]["shift"] is None and local[1]["shift"] is not None
    for r in ranks:
        for name, value in r["extra"]["grads"].items():
            parts = [loc[name] for loc in local if loc[name] is not None]
            assert (value is None) == (not parts), name
            if parts:
                assert torch.equal(value, sum(parts[1:], parts[0])), name


def test_noise_is_added_once(noisy):
    """The released gradient's spread around the noise-free one is σR/n (one draw), not √W·σR/n."""
    ranks = [r["noise"] for r in noisy[0]]
    expected = union_grads()
    noise = ranks[0]["grads"] - torch.cat([expected[n].flatten() for n in
                                           ("body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias")])
    assert torch.equal(ranks[0]["grads"], ranks[1]["grads"])  # every rank applies the same gradient
    ratio = noise.std().item() / (1.0 * R / BATCH)
    assert abs(ratio - 1) < 0.15, f"noise std is {ratio:.3f} × σR/n (√{WORLD} would mean one draw per rank)"
    assert ranks[0]["steps"] == ranks[1]["steps"] == NOISE_STEPS


def test_a_parameter_only_another_rank_uses_gets_its_noise(noisy):
    """Rank 0 adds the noise, inside its own DP backward, for the parameters that backward releases. A parameter
    only rank 1's batch used (a branch taken on long sequences) was summed without noise: its applied gradient was
    the same with σ = 1 as with σ = 0. Rank 0 now puts its noise into the all-reduce: the gradient's spread over
    steps (lr 0, the same batch) is σR/n, and every rank applies the same. A parameter no rank used gets its noise
    alone (σR/n around 0), as a zero clipped sum would."""
    ranks = [r["extra_noise"] for r in noisy[0]]
    assert torch.equal(ranks[0]["shift"], ranks[1]["shift"]) and torch.equal(ranks[0]["unused"], ranks[1]["unused"])
    spread = (ranks[0]["shift"] - ranks[0]["shift"].mean(0)).std().item() / (1.0 * R / BATCH)
    assert abs(spread - 1) < 0.3, f"the spread of a parameter only rank 1 uses is {spread:.3f} × σR/n"
    alone = ranks[0]["unused"].std().item() / (1.0 * R / BATCH)
    assert abs(alone - 1) < 0.3, f"the spread of a parameter no rank uses is {alone:.3f} × σR/n"


def test_one_checkpoint_written_by_rank_0_resumes_every_rank_exactly(noisy):
    ranks, folder = [r["resume"] for r in noisy[0]], noisy[1]
    for r in ranks:
        for name, value in r["straight"].items():
            assert torch.equal(value, r["resumed"][name]), name
            assert torch.equal(value, ranks[0]["straight"][name]), name  # the ranks agree
        assert r["steps"] == 4
    assert same(ranks[0]["privacy"], ranks[1]["privacy"])  # every rank's state_dict() is the one rank 0 writes
    parts = ranks[0]["privacy"]["ranks"]
    assert [p["sampler"]["rank"] for p in parts] == [0, 1] and [p["sampler"]["step"] for p in parts] == [2, 2]
    assert not torch.equal(parts[0]["sampler"]["generator_state"], parts[1]["sampler"]["generator_state"])
    # one process cannot take over a two-rank run's shards
    _, _, dp = training(0)
    with pytest.raises(dpcompile.ConfigError, match="saved by 2 data-parallel rank"):
        dp.privacy.load_state_dict(torch.load(folder / "checkpoint.pt", weights_only=True)["privacy"])


def test_buckets_are_fixed_per_device_and_dtype_in_reverse_order():
    params = [torch.zeros(n, dtype=d, requires_grad=True) for n, d in
              [(10, torch.float64), (3, torch.float32), (10, torch.float64), (30, torch.float64), (2, torch.float32)]]
    reducer = Reducer(bucket_mb=200 / 2**20)  # 200 bytes: 25 float64
    reducer.add(params)
    reducer.add(params[:2])  # added twice: kept once
    buckets = reducer.buckets()
    assert [[id(ref()) for ref in b.params] for b in buckets] == \
        [[id(params[3])], [id(params[4]), id(params[1])], [id(params[2]), id(params[0])]]
    assert reducer.buckets() is buckets  # unchanged parameters: the same layout
