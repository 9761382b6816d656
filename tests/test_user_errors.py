"""Issue 9's list of user mistakes: each one is a DPCompileError subclass whose message says what to do
(or, where the model is fine, it works). One test per item."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND, DEVICE
from helpers import Lambda, max_relative_error, squared_error
from reference import dp_reference
from torch import nn

import dpcompile
from dpcompile.errors import ConfigError, DPCompileError, ReleaseError, SampleMixingError

F64 = dict(dtype=torch.float64, device=DEVICE)


def mlp(frozen_first: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(**F64)
    model[0].weight.requires_grad_(not frozen_first)
    return model


def make(model, **kwargs):
    settings = dict(max_grad_norm=0.3, noise_multiplier=0.0, backend=BACKEND, loss_reduction="sum") | kwargs
    return dpcompile.dpcompile(model, **settings)


def data(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 4, generator=g, dtype=torch.float64).to(DEVICE),
            torch.randn(B, 2, generator=g, dtype=torch.float64).to(DEVICE))


def step(dp, B=5, seed=1):
    x, y = data(B, seed)
    squared_error(dp(x), y, "sum").backward()
    return x, y


# --- settings (also in test_adversarial.py; here so that the list is walked in one place) ---

@pytest.mark.parametrize("kwargs, says", [
    (dict(max_grad_norm=torch.tensor(1.0)), r"max_grad_norm must be a real number \(a tensor: pass t.item\(\)\)"),
    (dict(max_grad_norm="1.0"), "max_grad_norm must be a real number"),
    (dict(seed=2**70), r"seed must be an integer in \[0, 2\*\*63\)"),
], ids=["max_grad_norm_tensor", "max_grad_norm_string", "seed_2_70"])
def test_bad_settings_say_what_to_pass(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        make(mlp(), **kwargs)


def test_numpy_sample_rate_is_accepted():
    dp = make(mlp(), sample_rate=np.float32(0.01), noise_multiplier=1.0, seed=0)
    step(dp)
    assert type(dp.privacy.sample_rate) is float and dp.privacy.steps == 1


# --- a loss computed inside forward ---

class LossInside(nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.fc, self.loss = nn.Linear(4, 3), loss

    def forward(self, x, y):
        return self.loss(self.fc(x), y)


@pytest.mark.parametrize("loss", [lambda out, y: F.cross_entropy(out, y),
                                  lambda out, y: F.cross_entropy(out, y, reduction="sum")],
                         ids=["mean", "sum"])
def test_loss_inside_forward_says_return_per_sample_outputs(loss):
    dp = make(LossInside(loss).to(**F64))
    with pytest.raises(SampleMixingError) as err:
        dp(torch.randn(3, 4, **F64), torch.tensor([0, 2, 1], device=DEVICE)).backward()
    assert "reduction='none'" in str(err.value) and "outside the DP model" in str(err.value)


def test_per_sample_loss_inside_forward_works():
    """The fix the message asks for: reduction='none' in the model, the mean outside."""
    dp = make(LossInside(lambda out, y: F.cross_entropy(out, y, reduction="none")).to(**F64))
    dp(torch.randn(3, 4, **F64), torch.tensor([0, 2, 1], device=DEVICE)).sum().backward()


# --- parameters unfrozen or added after dpcompile ---

def test_parameter_unfrozen_after_the_first_step_is_clipped_and_noised_with_the_others():
    model = mlp(frozen_first=True)
    dp = make(model)
    step(dp)
    model.zero_grad(set_to_none=True)
    model[0].weight.requires_grad_(True)
    x, y = step(dp, seed=2)
    assert model[0].weight.grad is not None
    ref, norms = dp_reference(model, x, y, 0.3, "sum", loss=squared_error)
    assert (norms[0] > 0.3).any(), "the bound must clip"
    assert max_relative_error(model, ref) < 1e-10  # its per-sample gradient enters every sample's norm
    # its release is guarded like the others': a raw backward through the wrapped model is refused at the step
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    squared_error(model(x), y, "sum").backward()
    with pytest.raises(ReleaseError, match="0.weight"):
        opt.step()


def test_parameter_unfrozen_gets_noise():
    model = mlp(frozen_first=True)
    dp = make(model, noise_multiplier=1.0, seed=0)
    step(dp)
    model.zero_grad(set_to_none=True)
    model[0].weight.requires_grad_(True)
    x, y = step(dp, seed=2)
    ref, _ = dp_reference(model, x, y, 0.3, "sum", loss=squared_error)
    assert (model[0].weight.grad - ref["0.weight"]).abs().max() > 1e-3  # σR = 0.3: noise, not the clean sum
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # one noisy release: accepted


def test_parameter_frozen_after_the_first_step_leaves_the_norm():
    model = mlp()
    dp = make(model)
    step(dp)
    model.zero_grad(set_to_none=True)
    model[0].weight.requires_grad_(False)
    x, y = step(dp, seed=2)
    assert model[0].weight.grad is None
    ref, _ = dp_reference(model, x, y, 0.3, "sum", loss=squared_error)
    assert max_relative_error(model, ref) < 1e-10  # the norm is over the trainable parameters only


def test_parameter_added_after_dpcompile_is_clipped():
    class Growing(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()
            self.extra = None

        def forward(self, x):
            out = self.body(x)
            return out if self.extra is None else self.extra(out)

    torch.manual_seed(0)
    model = Growing().to(**F64)
    dp = make(model)
    step(dp)
    model.extra = nn.Linear(2, 2).to(**F64)
    model.zero_grad(set_to_none=True)
    x, y = step(dp, seed=2)
    ref, _ = dp_reference(model, x, y, 0.3, "sum", loss=squared_error)
    assert max_relative_error(model, ref) < 1e-10


@pytest.mark.parametrize("groups", ["per_layer", "lists"])
def test_parameter_unfrozen_outside_the_clip_groups_is_refused(groups):
    model = mlp(frozen_first=True)
    spec = "per_layer" if groups == "per_layer" else [["0.bias"], ["2.weight", "2.bias"]]
    dp = make(model, clip_groups=spec)
    step(dp)
    model.zero_grad(set_to_none=True)
    model[0].weight.requires_grad_(True)
    with pytest.raises(ConfigError, match=r"'0.weight'.*no clip group.*Call dpcompile\(\) again"):
        step(dp)
    assert model[0].weight.grad is None


# --- call forms ---

def test_keyword_calls_compile_once_and_survive_an_empty_batch():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, *, x):
            return self.fc(x)

    model = Keyword().to(**F64)
    dp = make(model)
    for B in (3, 0, 5, 1):
        x, y = data(B)
        out = dp(x=x)
        assert out.shape == (B, 2)
        squared_error(out, y, "sum").backward()
    assert dp.compilations == 1


class WithTable(nn.Module):
    """A tensor shared by all samples passed in the call; its dim 0 equals the batch size here."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, table):
        return self.fc(x) @ table


def test_shared_argument_whose_dim0_equals_the_batch_says_register_a_buffer():
    dp = make(WithTable().to(**F64))
    with pytest.raises(SampleMixingError, match=r"register_buffer"):
        dp(torch.randn(2, 4, **F64), torch.randn(2, 2, **F64)).sum().backward()


def test_batch_fixed_to_a_constant_says_what_to_do():
    class FixedBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.view(3, 4))

    dp = make(FixedBatch().to(**F64))
    with pytest.raises(ConfigError, match=r"L\['x'\]\.size\(\)\[0\] fixed to 3.*x\.flatten\(1\)"):
        dp(torch.randn(3, 4, **F64)).sum().backward()


def test_per_sample_arguments_never_combined_share_the_batch():
    """Two per-sample inputs the model never combines: one batch, not 'disagree on the batch size'."""
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 2), nn.Linear(3, 2)

        def forward(self, x, z):
            return self.a(x), self.b(z)

    model = TwoHeads().to(**F64)
    dp = make(model)
    for B in (3, 4):
        a, b = dp(torch.randn(B, 4, **F64), torch.randn(B, 3, **F64))
        (a.square().sum() + b.square().sum()).backward()
    assert dp.compilations == 1


def test_flatten_of_the_batch_names_the_module():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.flat, self.out = nn.Linear(4, 3), nn.Flatten(0), nn.Linear(9, 2)

        def forward(self, x):
            return self.out(self.flat(self.fc(x)))

    dp = make(Flat().to(**F64))
    with pytest.raises(SampleMixingError) as err:
        dp(torch.randn(3, 4, **F64)).sum().backward()
    assert "module 'flat' (Flatten)" in str(err.value) and "nn.Flatten()" in str(err.value)


@pytest.mark.parametrize("x", [torch.tensor(3.0), 3.0], ids=["0-dim tensor", "python float"])
def test_scalar_input_says_pass_a_batch(x):
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.w * x

    dp = make(Scale().to(**F64))
    with pytest.raises(ConfigError, match=r"unsqueeze\(0\)"):
        dp(x.to(**F64) if isinstance(x, torch.Tensor) else x)


def test_empty_batch_through_a_sequence_first_model_has_the_right_shape():
    model = nn.Sequential(Lambda(lambda x: x.transpose(0, 1)), nn.Linear(4, 3)).to(**F64)
    dp = make(model, noise_multiplier=1.0, seed=0)
    assert dp(torch.randn(2, 5, 4, **F64)).shape == (5, 2, 3)
    model.zero_grad(set_to_none=True)
    out = dp(torch.randn(0, 5, 4, **F64))
    assert out.shape == (5, 0, 3)
    out.square().sum().backward()  # the noise-only step
    assert dp.privacy.steps == 1 and all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())


# --- under torch.compile(model, backend=dpcompile.backend(...)): the DPCompileError itself ---

def test_refusal_under_torch_compile_is_the_dpcompile_error():
    model = LossInside(lambda out, y: F.cross_entropy(out, y)).to(**F64)
    run = torch.compile(model, fullgraph=True, backend=dpcompile.backend(
        max_grad_norm=1.0, noise_multiplier=0.0, backend=BACKEND))
    x = torch.randn(3, 4, **F64)
    torch._dynamo.mark_dynamic(x, 0)
    with pytest.raises(SampleMixingError, match="reduction='none'") as err:
        run(x, torch.tensor([0, 2, 1], device=DEVICE)).backward()
    assert isinstance(err.value, DPCompileError) and not isinstance(err.value, torch._dynamo.exc.BackendCompilerFailed)


# --- other mistakes met on the way ---

def test_unknown_setting_lists_the_settings():
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['max_norm'\]; dpcompile\(\) takes .*'max_grad_norm'"):
        make(mlp(), max_norm=1.0)


def test_explain_before_the_first_batch_says_run_one():
    with pytest.raises(DPCompileError, match="run one batch"):
        make(mlp()).explain()


def test_a_model_that_fails_on_its_inputs_says_so():
    """A float32 batch into a float64 model: the model's own error, not the sample check's."""
    with pytest.raises(DPCompileError, match="fails on this batch as it is.*Fix the model or its inputs") as err:
        make(mlp())(torch.randn(3, 4, device=DEVICE))
    assert "dtype" in str(err.value)


def test_a_batch_of_the_wrong_shape_says_so():
    with pytest.raises(DPCompileError, match=r"fails on this batch as it is \(RuntimeError: .*Fix the model"):
        make(mlp())(torch.randn(3, 5, **F64))


def test_dp_model_inside_your_own_compiled_train_step():
    """A whole train step under your own torch.compile (forward, backward, optimizer step): the DP model runs
    as written inside it, with its own compiled DP backward, and its hooks and noise op untraced. Three steps give
    the parameters of the same loop without torch.compile (noise off), the steps are counted, and a gradient from
    outside the DP model is still refused inside the compiled step. (Before: an internal Dynamo error.)"""
    xs = [torch.randn(5, 4, **F64) * 10 for _ in range(3)]

    def loop(compiled: bool):
        torch._dynamo.reset()
        model = mlp()
        dp = make(model)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)

        def step(x):
            dp(x).sum().backward()
            opt.step()
            opt.zero_grad()

        run = torch.compile(step, backend="eager") if compiled else step
        for x in xs:
            run(x)
        return [p.detach().clone() for p in model.parameters()], dp.privacy.steps

    (plain, plain_steps), (compiled, compiled_steps) = loop(False), loop(True)
    assert plain_steps == compiled_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(plain, compiled))

    torch._dynamo.reset()
    model = mlp()
    dp, opt = make(model), torch.optim.SGD(model.parameters(), lr=1.0)

    @torch.compile(backend="eager")
    def mixed_step(x):
        (dp(x).sum() + sum(p.square().sum() for p in model.parameters())).backward()
        opt.step()

    with pytest.raises(ReleaseError, match="outside the DP model"):
        mixed_step(xs[0])


def test_torch_compile_of_the_dp_model_itself():
    """torch.compile(dp_model): the DP model's call is left untraced, so the result is the DP model's own
    (same gradients as calling it directly, noise off; one step counted)."""
    x = torch.randn(5, 4, **F64) * 10
    grads = []
    for wrap in (False, True):
        torch._dynamo.reset()
        model = mlp()
        dp = make(model)
        (torch.compile(dp, backend="eager") if wrap else dp)(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert dp.privacy.steps == 1
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_pass_that_fails_is_named_and_a_refusal_is_passed_on(monkeypatch):
    """passes.run_pipeline: an internal exception of a pass, or a graph that fails fx's lint after it, reaches the
    user as that exception with a note naming the pass and saying it is a bug to report; a refusal (DPCompileError)
    from a pass reaches the user as it is, its message saying what to do."""
    from dpcompile import passes
    first = passes.PIPELINE[0]

    def raises(exc):
        def failing(gm, ctx):
            raise exc
        return failing

    def unlinted(gm, ctx):  # an output that reads a node defined after it
        gm.graph.output_node().prepend(gm.graph.call_function(torch.neg, (gm.graph.output_node(),)))
        return gm
    for failing, kind, name in ((raises(KeyError("x")), KeyError, "failing"), (unlinted, RuntimeError, "unlinted")):
        monkeypatch.setattr(passes, "PIPELINE", (first, failing))
        with pytest.raises(kind) as info:
            make(mlp())(*data(3)[:1]).sum().backward()
        assert any(f"the {name} pass failed" in note and "dpcompile bug" in note
                   for note in getattr(info.value, "__notes__", [])), info.value
    monkeypatch.setattr(passes, "PIPELINE", (first, raises(SampleMixingError("mixes samples: do this"))))
    with pytest.raises(SampleMixingError, match="do this") as info:
        make(mlp())(*data(3)[:1]).sum().backward()
    assert not getattr(info.value, "__notes__", None)


def test_recapture_at_every_call_ends_in_a_dpcompile_error(monkeypatch):
    """Per-sample data put in a plain tensor attribute before each call (not a call argument) is a constant of its
    size to the capture, so every batch size recaptures until Dynamo's limit, whose FailOnRecompileLimitHit reached
    the user as Dynamo's own error (found by probing, at the 74th size). Now a DPCompileError that says to pass such
    data as arguments (the limit lowered here to 3 captures)."""
    import contextlib

    from dpcompile import api

    class Attr(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.fc(x) * self.side.mean()

    @contextlib.contextmanager
    def low_limit(limit):
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        with config.patch(**{name: 3}):
            yield
    monkeypatch.setattr(api, "_recompile_limit", low_limit)
    model = Attr()
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, backend="eager")
    with pytest.raises(DPCompileError, match="pass per-sample data as tensor arguments"):
        for B in range(2, 12):
            model.side = torch.ones(B, 1)
            dp(torch.randn(B, 2)).sum().backward()


# --- found by probing (forty-first session): the backend form's captures, odd calls, odd layers ---

@torch._dynamo.disable
def batch_centred(h):
    return h - h.mean(0, keepdim=True)


class MixedOutsideTheGraph(nn.Module):
    """Samples mixed in Python that Dynamo skips, then one graph with every parameter."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(batch_centred(x * 1.0))))


@pytest.mark.parametrize("fullgraph", [False, True])
def test_the_backend_form_needs_fullgraph(fullgraph):
    """torch.compile(model, backend=dpcompile.backend(...)) without fullgraph=True ran the code between graphs as
    Python that no check saw: a batch mean there moved a release by 16R at B = 64 (1.7R at B = 8). Refused for any
    capture without fullgraph; with it, the skipped function is a graph break, refused too."""
    torch.manual_seed(0)
    run = torch.compile(MixedOutsideTheGraph().to(**F64), fullgraph=fullgraph, backend=dpcompile.backend(
        max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", backend=BACKEND))
    x = torch.randn(8, 4, **F64)
    torch._dynamo.mark_dynamic(x, 0)
    with pytest.raises(Exception) as err:
        run(x).sum().backward()
    found = err.value if isinstance(err.value, DPCompileError) else err.value.__cause__
    if fullgraph:
        assert isinstance(err.value, torch._dynamo.exc.Unsupported), err.value
    else:
        assert isinstance(found, ConfigError) and "needs fullgraph=True" in str(found), err.value


def test_a_graph_without_trainable_parameters_is_refused_by_name():
    """A parameter-free function whose input requires grad, under the backend form: the rewrite failed with an
    AssertionError ("stack expects a non-empty TensorList"); now a ConfigError at capture, which names the argument
    that requires grad (its gradient would leave raw)."""
    run = torch.compile(lambda x: torch.tanh(x) * 2, fullgraph=True, backend=dpcompile.backend(
        max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", backend=BACKEND))
    x = torch.randn(3, 4, **F64, requires_grad=True)
    torch._dynamo.mark_dynamic(x, 0)
    with pytest.raises(Exception) as err:
        run(x).sum().backward()
    found = err.value if isinstance(err.value, DPCompileError) else err.value.__cause__
    assert isinstance(found, ConfigError) and "requires grad" in str(found), err.value


class InferenceInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        with torch.inference_mode():
            scale = x.abs().amax(1, keepdim=True) + 1
        return self.fc(x / scale.clone())


def test_inference_mode_inside_forward_trains_and_is_left():
    """torch.inference_mode() around a part of forward that needs no gradient: the numerical check left its two
    runs' inference-mode guards in the wrong order, which raised "Inference tensors cannot be saved for backward"
    and left inference mode on for the whole process. It trains now, matching torch.func, and the mode is off."""
    torch.manual_seed(0)
    model = InferenceInside().to(**F64)
    x, y = data(5)
    dp = make(model, max_grad_norm=0.05)
    squared_error(dp(x), y, "sum").backward()
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    ref, _ = dp_reference(model, x, y, 0.05, loss_reduction="sum", loss=squared_error)
    assert max_relative_error(model, ref) < 1e-10


def test_the_callers_tensors_keep_no_dynamic_mark():
    """The DP model marked dim 0 of the caller's own tensors dynamic and left the mark: the caller's torch.compile of
    another function over the same batch then failed (ConstraintViolationError). The marks are undone after the
    call."""
    dp = make(mlp())
    x, y = data(4)
    dp(x)
    assert not hasattr(x, "_dynamo_dynamic_indices")
    probe = torch.compile(lambda a, b: (a.sum(1) - b.sum(1)).square().mean(), backend="eager")
    probe(x, y)


def test_export_gives_the_wrapped_model_and_lazy_layers_are_refused_by_name():
    """torch.export of a DP model raised a TypeError from dpcompile's batch-size code (and a refusal raised inside
    the export left torch 2.11's buffer-assignment hook installed, which broke a later capture that rebinds a
    buffer): it exports the wrapped model now, for inference, with a warning. An uninitialised lazy layer raised a
    ValueError from the release guards: a ConfigError now."""
    model = mlp()
    dp = make(model)
    x, _ = data(4)
    with pytest.warns(UserWarning, match="exports the model it wraps"):
        exported = torch.export.export(dp, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))
    with pytest.raises(ConfigError, match="uninitialised"):
        make(nn.Sequential(nn.LazyLinear(3), nn.Tanh(), nn.Linear(3, 2)))
