"""The privacy engine: clipping styles, accumulation, Poisson batches, accounting, noise, resumable state."""
import contextlib
import io
import math

import pytest
import torch
from conftest import BACKEND, DEVICE
from helpers import max_relative_error, squared_error
from reference import dp_reference
from torch import nn
from torch.utils.data import TensorDataset

import dpcompile
from dpcompile import Accountant, ConfigError, poisson_loader

F64 = dict(dtype=torch.float64, device=DEVICE)
_G = torch.Generator().manual_seed(0)
DATA = TensorDataset(torch.randn(24, 5, generator=_G, dtype=torch.float64),
                     torch.randn(24, 3, generator=_G, dtype=torch.float64))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(**F64)


def batch(B, seed=1, d_in=5, d_out=3):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(B, d_in, generator=g, dtype=torch.float64), torch.randn(B, d_out, generator=g, dtype=torch.float64)
    return x.to(DEVICE), y.to(DEVICE)


def flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def dp_grads(model, x, y, **kwargs):
    """.grad after one dpcompile'd backward of a 'mean' squared error."""
    kwargs = {"noise_multiplier": 0.0, "backend": BACKEND, **kwargs}
    dp = dpcompile.dpcompile(model, **kwargs)
    model.zero_grad(set_to_none=True)
    squared_error(dp(x), y, kwargs.get("loss_reduction", "mean")).backward()
    return dp


# --- clipping styles against the torch.func reference ---

@pytest.mark.parametrize("bound", [0.05, 50.0])
def test_automatic_clipping(bound):
    model, (x, y) = mlp(), batch(7)
    dp_grads(model, x, y, max_grad_norm=bound, clipping="automatic", clip_stability=0.05)
    ref, _ = dp_reference(model, x, y, bound, loss=squared_error, clipping="automatic", clip_stability=0.05)
    assert max_relative_error(model, ref) < 1e-10


def test_per_layer_clipping():
    model, (x, y) = mlp(), batch(7)
    dp = dp_grads(model, x, y, max_grad_norm=4.2, clip_groups="per_layer")
    groups = [["0.weight", "0.bias"], ["2.weight", "2.bias"]]
    assert [list(g) for g in dp.config.clip_groups] == groups
    ref, norms = dp_reference(model, x, y, 4.2, loss=squared_error, groups=groups)
    assert all((n > 4.2 / 2**0.5).any() and (n < 4.2 / 2**0.5).any() for n in norms), "both clip branches per group"
    assert max_relative_error(model, ref) < 1e-10


@pytest.mark.parametrize("clipping", ["abadi", "automatic"])
def test_per_group_clipping_with_own_bounds(clipping):
    model, (x, y) = mlp(), batch(6)
    groups, bounds = [["0.weight", "2.weight"], ["0.bias", "2.bias"]], [0.6, 0.8]
    dp_grads(model, x, y, max_grad_norm=1.0, clip_groups=groups, clip_group_norms=bounds, clipping=clipping)
    ref, _ = dp_reference(model, x, y, 1.0, loss=squared_error, groups=groups, bounds=bounds, clipping=clipping)
    assert max_relative_error(model, ref) < 1e-10


@pytest.mark.parametrize("kwargs, match", [
    (dict(clip_groups=[["0.weight", "0.bias"], ["2.weight"]]), "missing"),
    (dict(clip_groups=[["0.weight", "0.bias", "2.weight", "2.bias", "9.weight"]]), "does not have"),
    (dict(clip_groups=[["0.weight", "0.bias"], ["0.bias", "2.weight", "2.bias"]]), "several"),
    (dict(clip_groups="per_module"), "per_layer"),
    (dict(clip_groups="per_layer", clip_group_norms=[0.8, 0.8]), "sensitivity"),
    (dict(clip_group_norms=[1.0]), "needs clip_groups"),
    (dict(clip_groups="per_layer", clip_group_norms=[0.5, 1e-305]), "at least 2\\*\\*-1000"),  # R_g's slack underflows
])
def test_refuses_bad_clip_groups(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, **kwargs)


# --- gradient accumulation ---

@pytest.mark.parametrize("manual", [False, True], ids=["every_k", "context"])
def test_accumulation_equals_one_batch(manual):
    model, (x, y) = mlp(), batch(11)
    k, n = 3, 11
    dp = dpcompile.dpcompile(model, max_grad_norm=0.2, noise_multiplier=0.0, backend=BACKEND, expected_batch_size=n,
                             gradient_accumulation_steps=1 if manual else k)
    model.zero_grad(set_to_none=True)
    for i, (xm, ym) in enumerate(zip(x.tensor_split(k), y.tensor_split(k))):
        if manual and i < k - 1:
            with dp.privacy.accumulating():
                squared_error(dp(xm), ym).backward()
        else:
            squared_error(dp(xm), ym).backward()
    ref, _ = dp_reference(model, x, y, 0.2, "mean", n, loss=squared_error)
    assert max_relative_error(model, ref) < 1e-10
    assert dp.privacy.steps == 1 and dp.compilations == 1


def test_accumulation_adds_noise_once():
    """Accumulated grad − noise-free accumulated grad = N(0, σ²R²)/n: std σR/n, not √k·σR/n."""
    torch.manual_seed(0)
    model = nn.Linear(100, 100).to(**F64)
    x, y = batch(16, d_in=100, d_out=100)
    sigma, bound, k, n = 1.3, 0.7, 4, 16
    grads, engines = [], []
    for noise in (0.0, sigma):
        dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=noise, backend=BACKEND, seed=3,
                                 expected_batch_size=n, gradient_accumulation_steps=k, sample_rate=0.5)
        model.zero_grad(set_to_none=True)
        for i, (xm, ym) in enumerate(zip(x.tensor_split(k), y.tensor_split(k))):
            squared_error(dp(xm), ym).backward()
            grads.append(flat_grad(model))
        engines.append(dp.privacy)
    clean, noisy = grads[:k], grads[k:]
    assert all(torch.allclose(c, d, rtol=1e-12, atol=0) for c, d in zip(clean[:-1], noisy[:-1])), "noise before step k"
    diff = noisy[-1] - clean[-1]
    assert abs(diff.std().item() / (sigma * bound / n) - 1) < 0.03
    assert engines[1].steps == 1 and engines[1].calls == k
    for xm, ym in zip(x.tensor_split(k), y.tensor_split(k)):  # a second logical step
        squared_error(dp(xm), ym).backward()
    assert dp.privacy.steps == 2
    direct = Accountant()
    direct.record(sigma, 0.5, 2)
    assert dp.privacy.epsilon(1e-5) == direct.epsilon(1e-5)


def test_poisson_batches_split_into_micro_batches():
    """A Poisson logical batch split into k micro-batches (some empty) is one noisy step."""
    model = mlp()
    loader = poisson_loader(DATA, 0.1, steps=6, seed=3)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             gradient_accumulation_steps=3, seed=0)
    for x, y in loader:
        for xm, ym in zip(x.tensor_split(3), y.tensor_split(3)):
            squared_error(dp(xm.to(DEVICE)), ym.to(DEVICE)).backward()
    assert dp.privacy.steps == 6 and dp.privacy.calls == 18


# --- Poisson batches, accounting, calibration ---

@pytest.mark.parametrize("shape", [(4,), (3, 4)], ids=["2d", "3d"])
def test_poisson_batches_do_not_recompile(shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).to(**F64)
    data = TensorDataset(torch.randn(20, *shape, dtype=torch.float64), torch.randn(20, *shape[:-1], 2, dtype=torch.float64))
    loader = poisson_loader(data, 0.1, steps=12, seed=2)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.1, backend=BACKEND, data_loader=loader, seed=0)
    assert dp.config.expected_batch_size == 2  # round(q·N)
    sizes = []
    for x, y in loader:
        model.zero_grad(set_to_none=True)
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
        assert torch.isfinite(flat_grad(model)).all() and flat_grad(model).abs().min() > 0  # noise every step
        sizes.append(x.shape[0])
    assert 0 in sizes and 1 in sizes and len(set(sizes)) >= 3, sizes
    assert dp.compilations == 1, f"recompiled for batch sizes {sizes}"
    assert dp.privacy.steps == 12
    direct = Accountant()
    direct.record(1.1, 0.1, 12)
    assert dp.privacy.epsilon(1e-5) == direct.epsilon(1e-5)


def test_rdp_accountant_and_zero_noise():
    model, (x, y) = mlp(), batch(4)
    dp = dp_grads(model, x, y, max_grad_norm=1.0, noise_multiplier=1.5, sample_rate=0.1, expected_batch_size=4,
                  accountant="rdp")
    direct = Accountant("rdp")
    direct.record(1.5, 0.1, 1)
    assert dp.privacy.epsilon(1e-6) == direct.epsilon(1e-6)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, backend=BACKEND, sample_rate=0.1,
                             loss_reduction="sum")
    assert dp.privacy.epsilon(1e-5) == 0.0  # no step yet
    squared_error(dp(x), y, "sum").backward()
    assert dp.privacy.steps == 1 and dp.privacy.epsilon(1e-5) == float("inf")


def test_calibration_from_target_epsilon():
    model = mlp()
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, target_epsilon=2.0, target_delta=1e-5, epochs=5,
                             sample_rate=0.05, expected_batch_size=4, backend=BACKEND)
    sigma = dp.privacy.noise_multiplier
    assert dp.privacy.planned_steps == 100 and sigma > 0
    assert dp.backend.privacy.std == sigma * 1.0
    direct = Accountant()
    direct.record(sigma, 0.05, 100)
    assert 0.99 * 2.0 <= direct.epsilon(1e-5) <= 2.0
    dp.privacy.draws = 100  # as if 100 steps were taken
    assert dp.privacy.epsilon() == direct.epsilon(1e-5)  # delta defaults to target_delta


# --- noise ---

def noisy_grads(**kwargs):
    model, (x, y) = mlp(), batch(4)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, **kwargs)
    out = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        squared_error(dp(x), y).backward()
        out.append(flat_grad(model))
    return torch.cat(out), dp


def test_seed_reproduces_noise():
    a, _ = noisy_grads(seed=5)
    b, _ = noisy_grads(seed=5)
    c, _ = noisy_grads(seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_seed_for_the_noise_and_the_batches_gives_independent_streams():
    """dpcompile(seed=s) and poisson_loader(seed=s), as "seed everything" code does: both generators were torch's
    Mersenne Twister seeded with s, so a step's noise was computed from the very uniforms that chose its batch
    (example k joins iff u_k < q; randn turns u_k into the radius √(−2 ln(1 − u_k)) of a pair of noise values).
    Every
    example's membership could be read off the release: at N = 256, q = 0.05 all 9 members' pairs had radii below
    √(−2 ln(1 − q)) (and every non-member's above). Each stream now has a seed of its own (`stream_seed`): a
    member's pair falls below that radius with probability q, as any pair does."""
    N, q, seed = 256, 0.05, 1234
    loader = poisson_loader(TensorDataset(torch.randn(N, 64), torch.arange(N)), q, seed=seed)
    torch.manual_seed(0)
    model = nn.Linear(64, 8).to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, loss_reduction="sum", backend=BACKEND,
                             data_loader=loader, seed=seed)
    x, index = next(iter(loader))
    (dp(x.to(DEVICE)) * 0).sum().backward()  # every sample's gradient is 0: the release is the noise
    noise = torch.cat([model.weight.grad.flatten(), model.bias.grad.flatten()]).cpu()
    members = [k for k in index.tolist() if k % 16 < 8]  # randn fills blocks of 16: pair (k, k + 8) from u_k
    radius = [float(torch.hypot(noise[k // 16 * 16 + k % 8], noise[k // 16 * 16 + k % 8 + 8])) for k in members]
    below = sum(r < math.sqrt(-2 * math.log(1 - q)) for r in radius)
    assert len(members) >= 4 and below <= len(members) // 2, (below, len(members))


def test_a_loader_made_anew_with_the_same_seed_is_refused():
    """A Poisson loader made for each epoch with one seed draws the same batches every epoch, which the accountant
    would count as fresh samples: attaching it is refused (its own seed, or none, is accepted), and a sampler's q
    cannot be changed after the accountant took it (the accountant kept 0.25 while batches were drawn at 1.0)."""
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND,
                             data_loader=poisson_loader(DATA, 0.25, seed=1), loss_reduction="sum")
    with pytest.raises(ConfigError, match="same batches again"):
        dp.privacy.attach(poisson_loader(DATA, 0.25, seed=1))
    dp.privacy.attach(poisson_loader(DATA, 0.25, seed=2))
    dp.privacy.attach(poisson_loader(DATA, 0.25))
    with pytest.raises(ConfigError, match="same batches again"):
        dp.privacy.attach(poisson_loader(DATA, 0.25, seed=2))
    with pytest.raises(AttributeError):
        dp.privacy.sampler.sample_rate = 1.0
    assert dp.privacy.sampler.sample_rate == dp.privacy.sample_rate == 0.25


def test_a_loader_attached_for_each_epoch_trains_on():
    """A Poisson loader made for each epoch (its own seed) and attached: the DP model counts the new loader's handed
    batches from its start (each sampler numbers its streams from 1: a count kept from the last one would say the
    new loop's first batch was consumed already)."""
    loader = poisson_loader(DATA, 0.25, steps=4, seed=1)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader)
    for epoch in range(3):
        if epoch:
            loader = poisson_loader(DATA, 0.25, steps=4, seed=1 + epoch)
            dp.privacy.attach(loader)
        for x, y in loader:
            squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    assert dp.privacy.steps == 12


def test_secure_noise_differs_between_runs():
    a, dp = noisy_grads(secure_noise=True)
    b, _ = noisy_grads(secure_noise=True)
    assert not torch.equal(a, b)
    state = dp.privacy.state_dict()["noise"]
    assert set(state) == {"draws", "calls"}, "a secure run must not save its seed or generator state"
    with pytest.raises(ConfigError, match="secure_noise"):
        noisy_grads(secure_noise=True, seed=1)


# --- resumable state ---

def run_setup(model_seed=0, **kwargs):
    torch.manual_seed(model_seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(**F64)
    loader = poisson_loader(DATA, 0.25, steps=5, seed=kwargs.pop("loader_seed", 9))
    settings = dict(max_grad_norm=0.5, noise_multiplier=1.1, backend=BACKEND, data_loader=loader, seed=4) | kwargs
    dp = dpcompile.dpcompile(model, **settings)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    return model, dp, opt, loader


def batches(loader):
    while True:
        yield from loader


def train(model, dp, opt, it, steps):
    for _ in range(steps):
        x, y = next(it)
        opt.zero_grad(set_to_none=True)
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
        opt.step()


def checkpoint(model, dp, opt):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "dp": dp.privacy.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_run(p: torch.Tensor, q: torch.Tensor) -> None:
    """Equal on CPU. On CUDA the resumed run compiles afresh, and inductor picks its reduction kernels by the first
    batch size it sees, so sums may differ in the last bit (1e-16 on an H200): equal to 1e-12 there. A wrong noise,
    sampler or optimiser state moves the parameters by about lr = 0.05 (noise σR = 0.55 per step)."""
    if p.device.type == "cpu":
        assert torch.equal(p, q)
    else:
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_resume_equals_uninterrupted():
    model, dp, opt, loader = run_setup()
    it = batches(loader)
    train(model, dp, opt, it, 3)
    saved = checkpoint(model, dp, opt)
    train(model, dp, opt, it, 4)  # crosses into the loader's second epoch

    model2, dp2, opt2, loader2 = run_setup(model_seed=1, loader_seed=123, seed=77)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    dp2.privacy.load_state_dict(saved["dp"])
    assert dp2.privacy.steps == 3
    train(model2, dp2, opt2, batches(loader2), 4)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert_same_run(p, q)
    assert dp2.privacy.steps == dp.privacy.steps == 7
    assert dp2.privacy.epsilon(1e-5) == dp.privacy.epsilon(1e-5)
    assert dp2.privacy.state_dict()["accountant"] == dp.privacy.state_dict()["accountant"]


def test_a_privacy_state_must_belong_to_the_parameters_and_never_roll_back():
    """A privacy state loaded into a DP model that has released more steps was accepted: its step count and ε fell
    back, and the noise of the steps after it was drawn again (a difference of two releases then shows no noise).
    Refused now. In a fresh DP model, a state saved with other parameters (the model trained on from it, or none
    loaded) is refused at the next step; the parameters saved with it, loaded before or after it, resume."""
    model, dp, opt, loader = run_setup()
    it = batches(loader)
    train(model, dp, opt, it, 2)
    saved = checkpoint(model, dp, opt)
    train(model, dp, opt, it, 2)
    with pytest.raises(ConfigError, match="already released 4 noisy step"):
        dp.privacy.load_state_dict(saved["dp"])
    model2, dp2, opt2, loader2 = run_setup(model_seed=1)
    model2.load_state_dict(model.state_dict())  # the parameters trained on past the state: not its own
    dp2.privacy.load_state_dict(saved["dp"])
    for _ in range(2):  # a retry after the refusal is refused too (it trained on, repeating the noise)
        with pytest.raises(ConfigError, match="saved with other model parameters"):
            train(model2, dp2, opt2, batches(loader2), 1)
    assert dp2.privacy.steps == 2
    model3, dp3, opt3, loader3 = run_setup(model_seed=1)
    dp3.privacy.load_state_dict(saved["dp"])  # the privacy state first, then the model's own
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    train(model3, dp3, opt3, batches(loader3), 1)
    assert dp3.privacy.steps == 3


@pytest.mark.parametrize("other", [dict(noise_multiplier=1.2), dict(max_grad_norm=0.4), dict(clipping="automatic"),
                                   dict(accountant="rdp"), dict(loss_reduction="sum"), dict(expected_batch_size=5),
                                   dict(clip_groups="per_layer"), dict(data_loader=None, sample_rate=0.25, expected_batch_size=6)])
def test_refuses_checkpoint_of_other_settings(other):
    model, dp, opt, _ = run_setup()
    state = dp.privacy.state_dict()
    _, dp2, _, _ = run_setup(**other)
    with pytest.raises(ConfigError, match="checkpoint"):
        dp2.privacy.load_state_dict(state)
    with pytest.raises(ConfigError):
        dp2.privacy.load_state_dict({"steps": 0})


# --- bad input, refused before training ---

@pytest.mark.parametrize("kwargs, match", [
    (dict(noise_multiplier=-1.0), "noise_multiplier"),
    (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(max_grad_norm=-1.0), "max_grad_norm"),
    (dict(sample_rate=0.0, loss_reduction="sum"), "sample_rate"),
    (dict(sample_rate=1.5, loss_reduction="sum"), "sample_rate"),
    (dict(target_delta=1.0), "delta"),
    (dict(noise_multiplier=None, target_epsilon=1.0, target_delta=1.5, steps=10, sample_rate=0.1,
          loss_reduction="sum"), "delta"),
    (dict(noise_multiplier=None, target_epsilon=0.0, target_delta=1e-5, steps=10, sample_rate=0.1,
          loss_reduction="sum"), "unreachable"),
    (dict(noise_multiplier=None, target_epsilon=float("inf"), target_delta=1e-5, steps=10, sample_rate=0.1,
          loss_reduction="sum"), "unreachable"),
    (dict(noise_multiplier=None, target_epsilon=1.0, target_delta=1e-5, sample_rate=0.1, loss_reduction="sum"),
     "epochs or steps"),
    (dict(target_epsilon=1.0, target_delta=1e-5, steps=10, sample_rate=0.1, loss_reduction="sum"), "not both"),
    (dict(noise_multiplier=None), "noise_multiplier"),
    (dict(steps=10), "target_epsilon"),
    (dict(loss_reduction="sum", expected_batch_size=8), "expected_batch_size"),
    (dict(gradient_accumulation_steps=2), "expected_batch_size"),
    (dict(gradient_accumulation_steps=0, expected_batch_size=8), "gradient_accumulation_steps"),
    (dict(sample_rate=0.1), "expected batch size"),
    (dict(accountant="moments", loss_reduction="sum"), "mechanism"),
    (dict(data_loader=poisson_loader(DATA, 0.25), sample_rate=0.5), "sample_rate"),
])
def test_refuses_bad_input(kwargs, match):
    settings = dict(max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND) | kwargs
    with pytest.raises(ConfigError, match=match):
        dpcompile.dpcompile(mlp(), **settings)


def test_attach_loader_after_compiling():
    model = mlp()
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, sample_rate=0.25,
                             expected_batch_size=6)
    with pytest.raises(ConfigError, match="sample_rate"):
        dp.privacy.attach(poisson_loader(DATA, 0.5))
    loader = poisson_loader(DATA, 0.25, seed=1)
    dp.privacy.attach(loader)
    next(iter(loader))
    assert dp.privacy.state_dict()["sampler"]["step"] == 1


def test_model_state_dict_keys_unchanged():
    model, dp, _, _ = run_setup()
    assert list(dp.state_dict()) == list(model.state_dict())


def test_release_guard_forgets_collected_parameters_and_keeps_apart_reused_ids():
    """The release guard finds a parameter's state by id: the entry goes when the parameter does, and a new
    tensor that happens to get a collected parameter's id is not taken for it (its raw gradient is not guarded as
    a DP release, nor is a step over it refused)."""
    import gc

    from dpcompile.privacy import guard

    def trained_ids():
        m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DEVICE)
        dp = dpcompile.dpcompile(m, max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND)
        opt = torch.optim.SGD(m.parameters(), 0.1)
        dp(torch.randn(5, 3, device=DEVICE)).sum().backward()
        opt.step()
        assert all(guard.state_of(p) is not None for p in m.parameters())
        return {id(p) for p in m.parameters()}

    ids = trained_ids()
    gc.collect()
    assert not ids & set(guard._TRACKED)
    fresh = [nn.Parameter(torch.randn(4, 3)) for _ in range(200)]  # some may reuse the collected ids
    assert all(guard.state_of(p) is None for p in fresh)
    opt = torch.optim.SGD(fresh, 0.1)
    sum(p.sum() for p in fresh).backward()
    opt.step()  # not DP parameters: the guard has nothing to say


def test_wrapping_a_trained_module_again_warns_that_its_account_starts_at_zero():
    """A second DP model over a module the first one trained counts from 0 steps (ε for 5 against 10 applied),
    silently before; now with a warning that names the steps left out, at its first release (made with `dp =
    dpcompile(model, ...)`, the first one still lives while the next is made, and the next line may load its
    account: then nothing is said)."""
    import warnings
    model, dp, opt, loader = run_setup()
    train(model, dp, opt, batches(loader), 2)
    state = dp.privacy.state_dict()
    for load in (True, False):
        dp = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=1.1, backend=BACKEND, data_loader=loader,
                                 seed=4)
        if load:
            dp.privacy.load_state_dict(state)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                train(model, dp, opt, batches(loader), 1)
        else:
            with pytest.warns(RuntimeWarning, match=r"already had 3 noisy release\(s\).*holds 0 step\(s\)"):
                train(model, dp, opt, batches(loader), 1)


def test_a_second_dp_model_warns_at_its_first_release_when_others_released_the_module():
    """Two DP models made over one module before either trains counted their steps apart (5 and 5 of 10 applied), and
    a DP model made per phase of training (the first one gone) started its account at 0: both silent before. Now the
    later DP model warns at its first release, unless its account holds the earlier steps (the earlier model's
    privacy state loaded with its parameters); a DP model made again after one that never released (a refused
    model fixed and wrapped again) says nothing."""
    import gc
    import warnings
    model, dp, opt, loader = run_setup()
    other = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=1.1, backend=BACKEND, data_loader=loader,
                                seed=5)

    def first_release_says(dp_model, load=None):
        if load is not None:
            dp_model.privacy.load_state_dict(load)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(model, dp_model, opt, batches(loader), 1)
        return [str(w.message) for w in caught if "noisy release(s) from another DP model" in str(w.message)]
    assert first_release_says(dp) == []
    said = first_release_says(other)
    assert len(said) == 1 and "already had 1 noisy release(s)" in said[0] and "holds 0 step(s)" in said[0]
    del dp, other
    gc.collect()
    model, dp, opt, loader = run_setup()  # phases: the first one's 3 steps, then a new DP model
    train(model, dp, opt, batches(loader), 3)
    saved = dp.privacy.state_dict()
    del dp
    gc.collect()
    again = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=1.1, backend=BACKEND, data_loader=loader,
                                seed=4)
    assert first_release_says(again, load=saved) == [] and again.privacy.steps == 4
    del again
    gc.collect()
    again = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=1.1, backend=BACKEND, data_loader=loader,
                                seed=4)
    said = first_release_says(again)
    assert len(said) == 1 and "already had 4 noisy release(s)" in said[0] and again.privacy.steps == 1
    fresh = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(**F64)
    dpcompile.dpcompile(fresh, max_grad_norm=0.5, noise_multiplier=1.1, backend=BACKEND, sample_rate=0.25,
                        expected_batch_size=6)  # made, never released
    again = dpcompile.dpcompile(fresh, max_grad_norm=0.5, noise_multiplier=1.1, backend=BACKEND, sample_rate=0.25,
                                expected_batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        squared_error(again(batch(4)[0]), batch(4)[1]).backward()


def test_two_dp_models_in_one_backward_warn_that_their_accounts_compose():
    """Two DP models' outputs in one loss (two towers): each clips a sample to R and accounts for its own release,
    so one sample moves both (√2·R together) and the batch costs the composition of both accounts, as with two
    separate backwards. Said once, in the backward; both releases are made; one DP model over a module holding both
    clips each sample once over all their parameters."""
    import gc
    import warnings
    (x, y), first, second = batch(4), mlp(), mlp()
    settings = dict(max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, sample_rate=0.1, seed=0,
                    loss_reduction="sum")
    a, b = dpcompile.dpcompile(first, **settings), dpcompile.dpcompile(second, **settings)
    with pytest.warns(RuntimeWarning, match="two DP models meet in one backward.*composition of both accounts"):
        squared_error(a(x) + b(x), y, "sum").backward()
    assert a.privacy.steps == b.privacy.steps == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        squared_error(a(x) + b(x), y, "sum").backward()
    assert not [w for w in caught if "two DP models" in str(w.message)]

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = first, second

        def forward(self, x):
            return self.first(x) + self.second(x)
    del a, b
    gc.collect()
    both = dpcompile.dpcompile(Both(), **settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        squared_error(both(x), y, "sum").backward()
    assert both.privacy.steps == 1 and not [w for w in caught if "two DP models" in str(w.message)]


REUSES = {  # one Poisson batch's samples twice in one logical step, each time clipped to R on their own
    "same_batch_twice": (2, lambda x: (x, x)),  # gradient_accumulation_steps=2
    "two_views_accumulating": (None, lambda x: (x, x.flip(1))),  # privacy.accumulating(), then the noisy one
    "concatenated_in_one_call": (1, lambda x: (torch.cat([x, x.flip(1)]),)),
}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("how", sorted(REUSES))
def test_a_batch_used_twice_in_one_logical_step_is_refused(how, workers):
    """One Poisson batch forwarded twice in one logical step (as two micro-batches, or two views of it in separate
    backwards, or concatenated to a view of itself) put each sample into the release twice: a one-sample batch
    released a gradient of norm 2 (R = 1, σ = 0), 1.4–1.6 for two views, with no error, as the sampler's position
    does not move. The loader now tells which batch its loop holds (also with prefetching workers), and a logical
    step's backwards holding more samples than it is refused before its release; the batch split into micro-batches
    (some empty) and padded batches (batch_bucket) train as before."""
    k, views = REUSES[how]
    loader = poisson_loader(DATA, 0.2, steps=8, seed=3, num_workers=workers)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=0.0, backend=BACKEND, data_loader=loader,
                             gradient_accumulation_steps=k or 1, batch_bucket=4, seed=0)
    def split_step(x, y):  # the batch split into disjoint micro-batches (some may be empty): fine
        with dp.privacy.accumulating() if k is None else contextlib.nullcontext():
            for xm, ym in zip(x.tensor_split(k or 2), y.tensor_split(k or 2)):
                squared_error(dp(xm), ym, "sum").backward()
        if k is None:
            squared_error(dp(x[:0]), y[:0], "sum").backward()  # the noisy backward, on no sample
        dp.module.zero_grad()

    refused = 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(DEVICE), y.to(DEVICE)
        if i % 2 == 1 and len(x):
            *first, last = views(x)
            for view in first:
                with dp.privacy.accumulating() if k is None else contextlib.nullcontext():
                    squared_error(dp(view), y, "sum").backward()
            with pytest.raises(ConfigError, match=rf"ran on {2 * len(x)} samples, more than the {len(x)} of the"):
                squared_error(dp(last), y.repeat(len(last) // len(y), 1), "sum").backward()
            refused += 1
            dp.privacy.drop_accumulated()
        split_step(x, y)
    assert refused >= 2 and dp.privacy.steps == 8


def test_the_loaders_count_leaves_ordinary_loops_alone():
    """What the loader's count must not refuse: two DP models trained on one loader's batches (a sweep), the next
    batch fetched ahead; a loader whose workers hand batches out of order (in_order=False: nothing told); public rows
    added to the batch are refused with the way out named (a DataLoader around the sampler, which tells nothing)."""
    from torch.utils.data import DataLoader
    loader = poisson_loader(DATA, 0.25, steps=6, seed=3)
    models = [mlp(), mlp()]
    dps = [dpcompile.dpcompile(m, max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                               seed=i) for i, m in enumerate(models)]
    it = iter(loader)
    nxt = next(it)
    for _ in range(6):
        (x, y), nxt = nxt, next(it, None)
        for dp in dps:
            squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
            dp.module.zero_grad()
    assert [dp.privacy.steps for dp in dps] == [6, 6]
    unordered = poisson_loader(DATA, 0.25, steps=4, seed=3, num_workers=2, in_order=False)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=unordered,
                             seed=0)
    for x, y in unordered:
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    assert dp.privacy.steps == 4
    public = torch.randn(3, 5, **F64)
    for made in (loader, DataLoader(DATA, batch_sampler=dpcompile.PoissonBatchSampler(24, 0.25, steps=4, seed=5))):
        dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=made,
                                 seed=0, loss_reduction="sum")
        batches_of = iter(made)
        x, y = next(batches_of)
        x, y = torch.cat([x.to(DEVICE), public]), torch.cat([y.to(DEVICE), torch.zeros(3, 3, **F64)])
        if made is loader:
            with pytest.raises(ConfigError, match="public data added to the batch.*batch_sampler=dpcompile"):
                squared_error(dp(x), y, "sum").backward()
        else:
            squared_error(dp(x), y, "sum").backward()
            assert dp.privacy.steps == 1


def test_accumulating_over_several_poisson_batches_is_refused():
    """gradient_accumulation_steps=k is one Poisson batch split into k micro-batches. Drawing k loader batches per
    logical step went through: a sample could join a step twice (2R) and joined with probability about 2q where the
    accountant counted q (ε 4.5 reported, 10.0 spent, at q = 0.1 and k = 2). The loader's position moving inside a
    logical step is now refused; the split form (test_poisson_batches_split_into_micro_batches) is not."""
    loader = poisson_loader(DATA, 0.1, steps=6, seed=3)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             gradient_accumulation_steps=2, seed=0)
    it = iter(loader)
    x, y = next(it)
    squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    x, y = next(it)
    with pytest.raises(ConfigError, match="handed out another batch inside one logical step"):
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    assert dp.privacy.steps == 0


def test_a_tied_parameter_named_by_its_second_path_is_refused_as_such():
    """clip_groups naming a tied weight by its second path said the model did not have it; now it says whose alias
    it is."""
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, idx):
            return self.head(self.emb(idx))

    with pytest.raises(ConfigError, match="'head.weight' is 'emb.weight'"):
        dpcompile.dpcompile(Tied(), max_grad_norm=1.0, noise_multiplier=0.0, clip_groups=[["head.weight"]])


def test_accumulating_context_over_several_poisson_batches_is_refused():
    """privacy.accumulating() (the same as gradient_accumulation_steps, by hand) over two Poisson loader batches per
    logical step went through: the engine counted one step at q while a sample could join it twice (ε 2.67 reported
    where at least 5.03 was spent, q = 0.05, 50 steps): check_one_poisson_batch returned early inside accumulating()
    and with gradient_accumulation_steps=1. Refused now; one loader batch split by hand still works."""
    loader = poisson_loader(DATA, 0.25, steps=6, seed=3)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             seed=0)
    for x, y in loader:  # the split form: one Poisson batch, its first half a micro-step
        (x1, x2), (y1, y2) = x.to(DEVICE).tensor_split(2), y.to(DEVICE).tensor_split(2)
        with dp.privacy.accumulating():
            squared_error(dp(x1), y1).backward()
        squared_error(dp(x2), y2).backward()
    assert dp.privacy.steps == 6
    it = iter(loader)
    x, y = next(it)
    with dp.privacy.accumulating():
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    x, y = next(it)
    with pytest.raises(ConfigError, match="handed out another batch inside one logical step"):
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    assert dp.privacy.steps == 6
    dp.privacy.drop_accumulated()  # the partial step dropped: the next batch is a logical step of its own
    squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    assert dp.privacy.steps == 7


@pytest.mark.parametrize("how", ["autograd_grad", "accumulating", "load_state_dict"])
def test_micro_steps_of_an_earlier_logical_step_are_not_applied(how):
    """Micro-step sums left in .grad when a noisy release was made without them were absorbed by the next logical
    step's noisy release, so a sample in both loader batches was applied twice (2.0R at σ = 0, R = 1): the noisy
    release made by torch.autograd.grad in the middle of an accumulation (gradient_accumulation_steps=2, or
    privacy.accumulating()), or privacy.load_state_dict() of a step boundary after a micro-step (the sampler rewinds
    and hands the same batch out again). Such sums now belong to an earlier generation of the engine and the step is
    refused; dropped, the next logical step trains."""
    loader = poisson_loader(DATA, 1.0, steps=10, seed=0)
    model = mlp()
    k = 1 if how == "accumulating" else 2
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", backend=BACKEND,
                             data_loader=loader, gradient_accumulation_steps=k)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = lambda x, y: squared_error(dp(x.to(DEVICE)), y.to(DEVICE), "sum")  # noqa: E731
    it = iter(loader)

    def logical_step(x, y, last=lambda loss: loss.backward()):
        (x1, x2), (y1, y2) = x.tensor_split(2), y.tensor_split(2)
        with dp.privacy.accumulating() if how == "accumulating" else contextlib.nullcontext():
            loss(x1, y1).backward()
        last(loss(x2, y2))

    saved = dp.privacy.state_dict()
    if how == "load_state_dict":
        x, y = next(it)
        loss(*(t.tensor_split(2)[0] for t in (x, y))).backward()  # a micro-step, then back to the boundary
        dp.privacy.load_state_dict(saved)
    else:
        logical_step(*next(it), last=lambda loss: torch.autograd.grad(loss, list(model.parameters())))
    logical_step(*next(it))
    with pytest.raises(dpcompile.ReleaseError, match="micro-steps of an earlier logical step"):
        opt.step()
    dp.privacy.drop_accumulated()
    logical_step(*next(it))
    opt.step()
    assert dp.privacy.steps == (2 if how == "load_state_dict" else 3)


def test_a_dp_model_inside_torch_func_transforms_is_refused_by_name():
    """torch.func.grad over a DP model was refused as a graph break whose explanation was cut off ("dynamo failed for
    one of the following reasons:"); now by name, saying what to do."""
    model, (x, y) = mlp(), batch(4)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, backend=BACKEND)
    params = dict(dp.named_parameters())
    with pytest.raises(ConfigError, match="inside a torch.func transform"):
        torch.func.grad(lambda p: squared_error(torch.func.functional_call(dp, p, (x,)), y))(params)
    with pytest.raises(ConfigError, match="inside a torch.func transform"):
        torch.func.vmap(dp)(x.unsqueeze(1))


def reuse_setup(**loader_kwargs):
    loader = poisson_loader(DATA, 0.25, steps=4, seed=3, **loader_kwargs)
    model = mlp()
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             seed=0)
    return model, dp, loader


def test_a_second_noisy_release_of_one_poisson_batch_is_refused():
    """Several noisy releases of one Poisson batch (two optimizer steps per batch; LBFGS, whose step evaluates its
    closure max_iter times) were each counted as an independently sampled step at q (ε 0.72 reported where 6.4 was
    spent). Refused now, at the second release; the ordinary loops still run: one step per batch over several epochs
    (with evaluation calls in between, a loader prefetching in worker processes, or a loop fetching one batch ahead,
    whose last batches of an epoch share the sampler's final position)."""
    model, dp, loader = reuse_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = (t.to(DEVICE) for t in next(iter(loader)))
    for _ in range(2):
        opt.zero_grad()
        squared_error(dp(x), y).backward()
        opt.step()
        if dp.privacy.steps == 1:
            with pytest.raises(dpcompile.ReleaseError, match="second noisy release of the same Poisson batch"):
                opt.zero_grad()
                squared_error(dp(x), y).backward()
            break
    assert dp.privacy.steps == 1

    model, dp, loader = reuse_setup()
    lbfgs = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    x, y = (t.to(DEVICE) for t in next(iter(loader)))

    def closure():
        lbfgs.zero_grad()
        loss = squared_error(dp(x), y)
        loss.backward()
        return loss
    with pytest.raises(dpcompile.ReleaseError, match="LBFGS"):
        lbfgs.step(closure)
    assert dp.privacy.steps == 1

    for kwargs, ahead in [({}, False), ({"num_workers": 1, "prefetch_factor": 2}, False), ({}, True)]:
        model, dp, loader = reuse_setup(**kwargs)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):  # two epochs
            it = iter(loader)
            nxt = next(it) if ahead else None
            for _ in range(4):
                x, y = nxt if ahead else next(it)
                if ahead:
                    nxt = next(it, None)
                with torch.no_grad():
                    dp(x.to(DEVICE))  # evaluation: no release
                dp(x.to(DEVICE))
                squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
                opt.step()
                opt.zero_grad()
        assert dp.privacy.steps == 8, kwargs


def prefetched(loader, epochs, chained, depth=3):
    """A background prefetcher: a thread iterates the loader into a queue of `depth` batches the loop takes from;
    `chained` iterates every epoch in one thread (the next epoch's loop starts while the last one's batches wait in
    the queue), else a thread per epoch."""
    import queue
    import threading

    def fill(q, rounds):
        for _ in range(rounds):
            for batch in loader:
                q.put(batch)
        q.put(None)
    for _ in range(1 if chained else epochs):
        q = queue.Queue(maxsize=depth)
        threading.Thread(target=fill, args=(q, epochs if chained else 1), daemon=True).start()
        while (batch := q.get()) is not None:
            yield batch


@pytest.mark.parametrize("chained", [False, True])
def test_a_background_prefetcher_trains_and_its_misuse_is_refused(chained):
    """A thread prefetching a Poisson loader's batches draws them at times of its own: the sampler's position moved
    inside a logical step or not between two, and the checks by position refused ordinary training at random (a
    gradient accumulation over split batches, refused in most runs). Where the sampler draws in another thread than
    the DP model runs in, a PoissonLoader's stream of handed batches (one across loops: a prefetcher iterating epoch
    after epoch, its queue as deep as an epoch here, starts the next loop while the last one's batches wait) stands
    for the position, from the latest run of loops started in one thread (an evaluation pass over the loader between
    epochs, its batches never released, is skipped: counted, it let every later misuse through); a loader that does
    not tell is checked for reuse by counts, and for accumulation by its position, the refusal saying that a
    prefetcher moves it and what to do. The misuses stay refused: two optimizer steps per batch, a batch
    concatenated to itself, a loader batch per micro-step, also after evaluation passes."""
    from torch.utils.data import DataLoader
    loader = poisson_loader(DATA, 0.25, steps=6, seed=3)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             gradient_accumulation_steps=2, seed=0)
    for x, y in prefetched(loader, 3, chained, depth=6 if chained else 3):
        for xm, ym in zip(x.to(DEVICE).tensor_split(2), y.to(DEVICE).tensor_split(2)):
            squared_error(dp(xm), ym).backward()
        dp.module.zero_grad()
    assert dp.privacy.steps == 18
    batches = prefetched(loader, 3, chained)  # a loop fetching one batch ahead: the next loop starts before the
    nxt = next(batches)  # last batch is trained on
    while nxt is not None:
        (x, y), nxt = nxt, next(batches, None)
        for xm, ym in zip(x.to(DEVICE).tensor_split(2), y.to(DEVICE).tensor_split(2)):
            squared_error(dp(xm), ym).backward()
    assert dp.privacy.steps == 36

    def refused(loader, micro_batches, misuse, error=(ConfigError, dpcompile.ReleaseError), evaluated=0):
        dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND,
                                 data_loader=loader, gradient_accumulation_steps=micro_batches, seed=0)
        for _ in range(evaluated):  # an epoch of training, then an evaluation pass over the training loader
            for x, y in prefetched(loader, 1, False):
                for xm, ym in zip(x.to(DEVICE).tensor_split(micro_batches), y.to(DEVICE).tensor_split(micro_batches)):
                    squared_error(dp(xm), ym).backward()
            with torch.no_grad():
                for x, y in prefetched(loader, 1, False):
                    dp(x.to(DEVICE))
        with pytest.raises(error) as caught:
            for x, y in prefetched(loader, 3, chained):
                x, y = x.to(DEVICE), y.to(DEVICE)
                if misuse == "concatenated":
                    x, y = torch.cat([x, x]), torch.cat([y, y])
                for _ in range(2 if misuse == "twice" else 1):
                    squared_error(dp(x), y).backward()
        return str(caught.value)
    for seed, (micro_batches, misuse) in enumerate([(1, "twice"), (1, "concatenated"), (2, "per micro-step")]):
        refused(poisson_loader(DATA, 0.25, steps=6, seed=4 + seed), micro_batches, misuse)
        if not chained:
            refused(poisson_loader(DATA, 0.25, steps=6, seed=4 + seed), micro_batches, misuse, evaluated=4)
    untold = DataLoader(DATA, batch_sampler=dpcompile.PoissonBatchSampler(24, 0.25, steps=6, seed=5))
    assert "draws its batches in another thread" in refused(untold, 2, "per micro-step", ConfigError)
    assert "second noisy release" in refused(untold, 1, "twice", dpcompile.ReleaseError)
    untold = DataLoader(DATA, batch_sampler=dpcompile.PoissonBatchSampler(24, 0.25, steps=6, seed=5))  # (a fresh
    # one: a refused run's thread is left holding the last one's epoch)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=untold,
                             seed=0)
    for x, y in prefetched(untold, 3, chained):
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    assert dp.privacy.steps == 18


def test_loops_in_the_training_thread_that_the_stream_must_follow():
    """Ordinary loops the stream of handed batches must not refuse: a look at a sample batch with next(iter(loader))
    inside the loop (a second loop over the sampler: the stream is broken, the position checks on), a loop fetching
    one batch ahead across epochs (the next epoch's loop starts before the last batch is trained on), and each step
    run in a worker thread while the loop iterates a DataLoader around a PoissonBatchSampler in the main thread
    (accumulation over one batch split in two)."""
    import concurrent.futures
    import itertools

    from torch.utils.data import DataLoader
    loader = poisson_loader(DATA, 0.25, steps=6, seed=3)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             seed=0)
    for i, (x, y) in enumerate(loader):
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
        if i % 2:
            with torch.no_grad():
                dp(next(iter(loader))[0].to(DEVICE))  # (a batch of the epoch's: the loop gets one fewer)
    assert dp.privacy.steps == i + 1 >= 3
    loader = poisson_loader(DATA, 0.25, steps=4, seed=3)
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             seed=0)
    batches = itertools.chain.from_iterable(loader for _ in range(4))
    nxt = next(batches)
    while nxt is not None:
        (x, y), nxt = nxt, next(batches, None)
        squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    assert dp.privacy.steps == 16
    loader = DataLoader(DATA, batch_sampler=dpcompile.PoissonBatchSampler(24, 0.25, steps=6, seed=5))
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             gradient_accumulation_steps=2, seed=0)

    def step(x, y):
        for xm, ym in zip(x.to(DEVICE).tensor_split(2), y.to(DEVICE).tensor_split(2)):
            squared_error(dp(xm), ym).backward()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        for _ in range(2):
            for x, y in loader:
                pool.submit(step, x, y).result()
    assert dp.privacy.steps == 12
    loader = poisson_loader(DATA, 0.25, steps=6, seed=3)  # the same, and an evaluation pass over the loader after
    dp = dpcompile.dpcompile(mlp(), max_grad_norm=1.0, noise_multiplier=1.0, backend=BACKEND, data_loader=loader,
                             seed=0)  # each epoch: two releases of each batch are refused all the same

    def twice(x, y, times):
        for _ in range(times):
            squared_error(dp(x.to(DEVICE)), y.to(DEVICE)).backward()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool, \
            pytest.raises((ConfigError, dpcompile.ReleaseError)):
        for epoch in range(4):
            for x, y in loader:
                pool.submit(twice, x, y, 1 + (epoch > 0)).result()
            with torch.no_grad():
                for x, y in loader:
                    dp(x.to(DEVICE))
    assert 6 <= dp.privacy.steps < 6 + 2 * 6


class FlagBranch(nn.Module):
    """`extra` is used only while the user's flag `use_extra` is set (a Dynamo guard on the flag: each setting a
    capture of its own, no graph break)."""

    def __init__(self, d_in=5, d_out=3):
        super().__init__()
        self.fc, self.extra = nn.Linear(d_in, d_out), nn.Linear(d_in, d_out)
        self.use_extra = True

    def forward(self, x):
        out = self.fc(x)
        if self.use_extra:
            out = out + self.extra(x)
        return out


def test_a_parameter_a_step_does_not_use_gets_a_noise_only_release():
    """A trainable parameter that the step's capture does not use (a branch on a flag of the model's) got no release:
    its .grad stayed None and the optimizer left it unchanged, so the published model showed, without noise, which
    steps used it (a branch on the batch size did the same, and is refused now: test_refusals). It now gets the
    noise-only release N(0, σ²R²)/n from the engine's generator when σ > 0, as rank 0 adds it under data
    parallelism, also when micro-steps accumulated into it."""
    sigma, bound, n = 1.3, 0.7, 4
    torch.manual_seed(0)
    model = FlagBranch(40, 250).to(**F64)
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=sigma, backend=BACKEND,
                             expected_batch_size=n, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for B, used in ((5, True), (2, False), (0, False), (3, True)):
        model.use_extra = used
        x, y = batch(B, d_in=40, d_out=250)
        w = model.extra.weight.detach().clone()
        squared_error(dp(x), y).backward()
        for p in model.extra.parameters():
            assert p.grad is not None, f"batch of {B}: no release for a parameter of `extra`"
        if not used:
            std = model.extra.weight.grad.std().item()
            assert abs(std / (sigma * bound / n) - 1) < 0.03, (B, std)
        opt.step()
        opt.zero_grad()
        assert not torch.equal(w, model.extra.weight)
    assert dp.privacy.steps == 4

    torch.manual_seed(0)  # a 'mean' loss without a fixed n: divided by the batch's own size, as the release is
    model = FlagBranch(40, 250).to(**F64)
    model.use_extra = False
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=sigma, backend=BACKEND, seed=0)
    x, y = batch(2, d_in=40, d_out=250)
    squared_error(dp(x), y).backward()
    assert abs(model.extra.weight.grad.std().item() / (sigma * bound / 2) - 1) < 0.03

    torch.manual_seed(0)  # σ = 0 (ε infinite): no noise-only release, as under data parallelism (test_distributed)
    model = FlagBranch().to(**F64)
    model.use_extra = False
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, backend=BACKEND)
    squared_error(dp(batch(2)[0]), batch(2)[1]).backward()
    assert model.extra.weight.grad is None and model.fc.weight.grad is not None

    grads = []  # accumulation: `extra` used by the first micro-batch only; its sums get the noise at the last
    for noise in (0.0, sigma):
        torch.manual_seed(0)
        model = FlagBranch(40, 250).to(**F64)
        dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=noise, backend=BACKEND, seed=0,
                                 expected_batch_size=n, gradient_accumulation_steps=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        x, y = batch(6, d_in=40, d_out=250)
        for used, xm, ym in zip((True, False), x.split([4, 2]), y.split([4, 2])):
            model.use_extra = used
            squared_error(dp(xm), ym).backward()
        opt.step()  # refused before: `extra` held clipped sums without noise
        grads.append(model.extra.weight.grad.clone())
    assert grads[0].abs().max() > 0
    assert abs((grads[1] - grads[0]).std().item() / (sigma * bound / n) - 1) < 0.03
