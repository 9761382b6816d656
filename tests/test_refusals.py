"""Refusals name the module path and the op; dpcompile.fix turns a refused BatchNorm model into one that works."""
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, SLOW_ON_CPU
from helpers import Case, Lambda, check_against_reference
from torch import nn

import dpcompile
from dpcompile.errors import GraphBreakError, SampleMixingError, UnsupportedOpError
from dpcompile.fix import fix

F64 = torch.float64


def compile_and_step(model: nn.Module, x: torch.Tensor) -> None:
    """One DP step (eager backend, no noise): the refusals surface here."""
    dp = dpcompile.dpcompile(model.to(DEVICE, F64), max_grad_norm=1.0, noise_multiplier=0.0, backend="eager")
    dp(x.to(DEVICE)).square().sum().backward()


class Net(nn.Module):
    """features (a layer, the block under test, ReLU) then a linear head: modules have readable paths."""

    def __init__(self, layer: nn.Module, block: nn.Module, features_out: int):
        super().__init__()
        self.features = nn.Sequential(layer, block, nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(features_out, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Centered(nn.Module):
    """linear -> center (a per-batch statistic) -> linear."""

    def __init__(self, fn):
        super().__init__()
        self.inp, self.center, self.out = nn.Linear(4, 6), Lambda(fn), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.center(self.inp(x)))


# (name, builder of the features' first layer and the norm over C=6 channels, input of batch B, features_out)
BATCHNORMS = [
    ("bn1d_NC", lambda bn: Net(nn.Linear(4, 6, bias=False), bn(6), 6), lambda B: torch.randn(B, 4, dtype=F64)),
    ("bn1d_NCL", lambda bn: Net(nn.Conv1d(2, 6, 3, bias=False), bn(6), 18), lambda B: torch.randn(B, 2, 5, dtype=F64)),
    ("bn2d", lambda bn: Net(nn.Conv2d(2, 6, 3, bias=False), bn(6), 24), lambda B: torch.randn(B, 2, 4, 4, dtype=F64)),
    ("bn3d", lambda bn: Net(nn.Conv3d(2, 6, 2, bias=False), bn(6), 24), lambda B: torch.randn(B, 2, 3, 3, 2, dtype=F64)),
]
BN_CLASS = {"bn1d_NC": nn.BatchNorm1d, "bn1d_NCL": nn.BatchNorm1d, "bn2d": nn.BatchNorm2d, "bn3d": nn.BatchNorm3d}


# ------------------------------------------------------------------------------------------------
# BatchNorm: refused in training mode, fixed by dpcompile.fix, allowed in eval mode
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, build, inputs", BATCHNORMS, ids=[b[0] for b in BATCHNORMS])
def test_batchnorm_training_refused_then_fixed(name, build, inputs):
    bn_class = BN_CLASS[name]
    torch.manual_seed(0)
    model = build(bn_class)
    with pytest.raises(SampleMixingError) as err:
        compile_and_step(model, inputs(3))
    message = str(err.value)
    assert f"'features.1' ({bn_class.__name__})" in message and "aten." in message and "mean" in message
    assert "dpcompile.fix(model)" in message
    assert fix(model) == [f"features.1: {bn_class.__name__}(6) -> GroupNorm(2, 6)"]
    check_against_reference(Case(f"{name}_fixed", lambda: model, inputs))


def eval_batchnorm(trainable: tuple[str, ...]):
    """Conv -> BatchNorm2d in eval mode (running statistics) -> head; only the named affine params trainable."""
    model = Net(nn.Conv2d(2, 6, 3, bias=False), nn.BatchNorm2d(6), 24)
    bn = model.features[1]
    with torch.no_grad():  # running statistics and affine away from their initial values
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    bn.eval()
    for name, p in bn.named_parameters():
        p.requires_grad_(name in trainable)
    return model


EVAL_INPUTS = BATCHNORMS[2][2]


@pytest.mark.parametrize("trainable", [(), ("bias",)], ids=["affine_frozen", "bias_trainable"])
def test_batchnorm_eval_mode_not_refused(trainable):
    """Eval-mode BatchNorm normalises with running statistics: no mixing, and the result matches the reference."""
    check_against_reference(Case("bn_eval", lambda: eval_batchnorm(trainable), EVAL_INPUTS))


class ScaledByFunctionOfParameter(nn.Module):
    """y = x · exp(p): p's gradient is Σ_b(g·x) · exp(p), a scale applied after the batch sum."""

    def __init__(self):
        super().__init__()
        self.inp, self.p = nn.Linear(4, 5), nn.Parameter(torch.randn(5) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inp(x) * self.p.exp()


@pytest.mark.parametrize("case", [
    Case("bn_eval_weight_trainable", lambda: eval_batchnorm(("weight", "bias")), EVAL_INPUTS),
    Case("param_through_exp", ScaledByFunctionOfParameter, lambda B: torch.randn(B, 4, dtype=F64)),
], ids=lambda c: c.name)
def test_gradient_scaled_after_batch_sum(case):
    """BatchNorm eval's weight gradient is Σ_b(g·(x−μ))·rsqrt(var+eps): linear in the per-sample term."""
    check_against_reference(case)


# ------------------------------------------------------------------------------------------------
# Other sample mixing inside the model
# ------------------------------------------------------------------------------------------------

MIXERS = [
    ("mean", lambda x: x - x.mean(0), "aten.mean.dim"),
    ("sum_keepdim", lambda x: x + x.sum(0, keepdim=True), "aten.sum.dim_IntList"),
    ("mean_all", lambda x: x - x.mean(), "aten.mean.default"),
    ("std", lambda x: x / x.std(0), "aten.var.correction"),
    ("max", lambda x: x - x.max(0).values, "aten.max.dim"),
    ("softmax_over_batch", lambda x: torch.softmax(x, 0), "aten.amax.default"),
    ("sort", lambda x: x.sort(0).values, "aten.sort.default"),
    ("cumsum", lambda x: x.cumsum(0), "aten.cumsum.default"),
    ("attention_across_batch", lambda x: torch.softmax(x @ x.T, 1) @ x, "aten.mm.default"),
    # nn.Bilinear's op (supported per sample) summed over the batch, or pairing a sample with the others
    ("trilinear_over_batch", lambda x: x + torch._trilinear(x, x, x, [2], [1], [2], [0]).sum(0, True),
     "aten._trilinear"),
    ("trilinear_across_samples", lambda x: x + torch._trilinear(x, x.t(), x, [2], [0], [2], [1]).sum(1, True),
     "aten._trilinear"),
]


@pytest.mark.parametrize("name, fn, op", MIXERS, ids=[m[0] for m in MIXERS])
def test_batch_statistic_refused(name, fn, op):
    with pytest.raises(SampleMixingError) as err:
        compile_and_step(Centered(fn), torch.randn(3, 4, dtype=F64))
    message = str(err.value)
    assert "module 'center' (Lambda)" in message and op in message
    assert "per sample" in message


INDEXERS = [
    ("first_sample", lambda x: x - x[0], "aten.select.int"),
    ("slice", lambda x: x + x[:1], "aten.slice.Tensor"),
    ("flip", lambda x: x.flip(0), "prims.rev.default"),
    ("roll", lambda x: x.roll(1, 0), "aten.index.Tensor"),
    ("permute_samples", lambda x: x[torch.arange(x.shape[0] - 1, -1, -1)], "aten.index.Tensor"),
    # a reshape that moves values between samples: the safety pass follows where the batch sits
    ("reshape_across_batch", lambda x: x.reshape(6, -1).sum(0).reshape(-1, 1).expand(-1, 6), "aten.view.default"),
]


@pytest.mark.parametrize("name, fn, op", INDEXERS, ids=[m[0] for m in INDEXERS])
def test_batch_indexing_refused(name, fn, op):
    with pytest.raises(SampleMixingError) as err:
        compile_and_step(Centered(fn), torch.randn(3, 4, dtype=F64))
    assert "module 'center' (Lambda)" in str(err.value) and op in str(err.value)


# ------------------------------------------------------------------------------------------------
# Graph breaks, RNNs, parameters whose gradient op has no rule
# ------------------------------------------------------------------------------------------------

def branchy(x: torch.Tensor) -> torch.Tensor:
    if x.sum() > 0:  # data-dependent Python branch
        return x * 2
    return x


def test_graph_break_refused():
    with pytest.raises(GraphBreakError) as err:
        compile_and_step(Centered(branchy), torch.randn(3, 4, dtype=F64))
    assert "Data-dependent branching" in str(err.value)
    assert "if x.sum() > 0" in str(err.value.__cause__)  # Dynamo's own message has the user's source line


def test_graph_break_names_the_source():
    with pytest.raises(GraphBreakError) as err:
        compile_and_step(Centered(branchy), torch.randn(3, 4, dtype=F64))
    assert "test_refusals.py" in str(err.value) and "if x.sum() > 0" in str(err.value)


def test_graph_break_keeps_dynamos_explanation():
    """A break on a call Dynamo skips (warnings.warn inside forward, as MultiheadAttention's deprecation warning for a
    bool key_padding_mask with a float attn_mask does) said only "Attempted to call function marked as skipped":
    Dynamo's explanation line is kept now."""
    import warnings

    def warns(x):
        warnings.warn("a warning inside forward")
        return x
    with pytest.raises(GraphBreakError, match="Explanation:"):
        compile_and_step(Centered(warns), torch.randn(3, 4, dtype=F64))


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]):
        super().__init__()
        self.rnn, self.fc = cell(4, 5, batch_first=True), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda c: c.__name__)
def test_rnn_refused_up_front(cell):
    with pytest.raises(UnsupportedOpError) as err:
        dpcompile.dpcompile(Recurrent(cell), max_grad_norm=1.0, noise_multiplier=0.0, backend="eager")
    assert f"module 'rnn' ({cell.__name__})" in str(err.value) and "recurrent" in str(err.value)


def test_frozen_rnn_refused_too():
    """A frozen nn.LSTM breaks the graph as well, so it is refused up front, not at the first step."""
    model = Recurrent(nn.LSTM)
    model.rnn.requires_grad_(False)
    with pytest.raises(UnsupportedOpError, match="module 'rnn' \\(LSTM\\)"):
        dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, backend="eager")


class BilinearPair(nn.Module):
    """nn.Bilinear (aten._trilinear) on two per-sample inputs computed from x, then a linear head."""

    def __init__(self):
        super().__init__()
        self.a, self.bil, self.head = nn.Linear(6, 4), nn.Bilinear(4, 6, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.bil(torch.tanh(self.a(x)), x)))


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
def test_bilinear_weight_refused_frozen_supported(backend):
    """nn.Bilinear's weight gradient (a _trilinear over the rows) has no per-sample rule: refused naming it; frozen,
    the layer keeps samples apart (the safety pass's _trilinear rule) and the rest trains, against the reference,
    batches of 3, 1 and 5 through one model (inductor's batch-of-one graph too)."""
    with pytest.raises(UnsupportedOpError) as err:
        compile_and_step(BilinearPair(), torch.randn(3, 6, dtype=F64))
    assert "bil.weight" in str(err.value) and "aten._trilinear" in str(err.value)

    def frozen():
        model = BilinearPair()
        model.bil.weight.requires_grad_(False)
        return model
    for inputs in (lambda B: torch.randn(B, 6, dtype=F64), lambda B: torch.randn(B, 5, 6, dtype=F64)):
        for policy in ("ghost", "per_sample") if backend == "eager" else ("mixed",):
            check_against_reference(Case("bilinear_frozen", frozen, inputs), policy=policy, backend=backend,
                                    batches=(3, 1, 5))


def test_embedding_bag_max_refused():
    model = nn.Sequential(nn.EmbeddingBag(10, 4, mode="max"), nn.Linear(4, 2))
    with pytest.raises(UnsupportedOpError) as err:
        compile_and_step(model, torch.randint(0, 10, (3, 5)))
    message = str(err.value)
    assert "parameter '0.weight' of module '0'" in message and "aten._embedding_bag_backward" in message


@pytest.mark.parametrize("bag", [False, True])
@pytest.mark.parametrize("option, trainable", [("scale_grad_by_freq", True), ("sparse", True), ("max_norm", True),
                                               ("max_norm", False)])
def test_embedding_options_refused_up_front(bag, option, trainable):
    """Options that mix samples (scale_grad_by_freq), leave gradients unclipped (sparse) or change the weight from the
    batch's indices without noise (max_norm, frozen too: the renorm is in place, in the forward): refused before
    capture, naming the module and the option, and nothing of the model changed."""
    kwargs = {"max_norm": 1.0} if option == "max_norm" else {option: True}
    table = (nn.EmbeddingBag(10, 4, mode="sum", **kwargs) if bag else nn.Embedding(10, 4, **kwargs)).requires_grad_(
        trainable)
    model = nn.Sequential(table, nn.Flatten(), nn.LazyLinear(2))
    model(torch.randint(0, 10, (1, 5)))  # the head's size
    with torch.no_grad():
        table.weight.mul_(5)  # rows far above max_norm: a renorm would show
    before = table.weight.detach().clone()
    with pytest.raises(UnsupportedOpError, match=rf"module '0' \({type(table).__name__}\): .*{option}"):
        compile_and_step(model, torch.randint(0, 10, (3, 5)))
    assert torch.equal(table.weight.detach().cpu().to(before.dtype), before)


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm is deprecated")
def test_deprecated_weight_norm_hook_refused_with_the_parametrisation_named():
    """The deprecated hook's weight_g had its gradient from an op with no rule; the refusal now names what works
    (nn.utils.parametrizations.weight_norm, tests/test_reparametrised.py); frozen, the hook is no obstacle."""
    model = nn.Sequential(nn.Linear(4, 4), nn.utils.weight_norm(nn.Linear(4, 3)))
    with pytest.raises(UnsupportedOpError, match=r"module '1' \(Linear\): .*parametrizations\.weight_norm"):
        compile_and_step(model, torch.randn(3, 4, dtype=F64))
    model[1].requires_grad_(False)
    compile_and_step(model, torch.randn(3, 4, dtype=F64))


class CumsumWeight(nn.Module):
    """A weight transformed before use by an op the norm cannot follow per sample (its backward reverses the term)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.cumsum(0).t()


def test_weight_transform_outside_the_linear_ops_refused():
    """Weight norm and weight standardisation are followed (tests/test_reparametrised.py); a transform whose
    backward uses an op outside those (cumsum's reversal) is refused, naming the parameter and the op."""
    with pytest.raises(UnsupportedOpError) as err:
        compile_and_step(CumsumWeight(), torch.randn(3, 4, dtype=F64))
    assert "parameter 'w' of module '<model>'" in str(err.value) and "prims.rev" in str(err.value)


# ------------------------------------------------------------------------------------------------
# fix(model)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels, groups", [(64, 32), (96, 32), (48, 16), (24, 8), (12, 4), (6, 2), (7, 1)])
def test_fix_group_count(channels, groups):
    model = nn.Sequential(nn.BatchNorm2d(channels))
    assert fix(model) == [f"0: BatchNorm2d({channels}) -> GroupNorm({groups}, {channels})"]
    assert isinstance(model[0], nn.GroupNorm) and model[0].num_groups == groups


def test_fix_nested_paths_and_kinds():
    block = nn.Module()
    block.conv1, block.bn1 = nn.Conv2d(3, 64, 3), nn.BatchNorm2d(64)
    model = nn.Module()
    model.layer1 = nn.Sequential(block)
    model.heads = nn.ModuleList([nn.BatchNorm1d(10, affine=False), nn.SyncBatchNorm(48), nn.BatchNorm3d(8)])
    model.inorm = nn.InstanceNorm2d(4, affine=True)
    assert fix(model) == [
        "layer1.0.bn1: BatchNorm2d(64) -> GroupNorm(32, 64)",
        "heads.0: BatchNorm1d(10, affine=False) -> GroupNorm(2, 10, affine=False)",
        "heads.1: SyncBatchNorm(48) -> GroupNorm(16, 48)",
        "heads.2: BatchNorm3d(8) -> GroupNorm(8, 8)",
    ]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert isinstance(model.inorm, nn.InstanceNorm2d)
    assert model.heads[0].weight is None and model.heads[0].bias is None


def test_fix_keeps_parameters_and_settings():
    bn = nn.BatchNorm2d(8, eps=1e-3).to(F64)
    with torch.no_grad():
        bn.weight.uniform_(), bn.bias.uniform_()
    bn.bias.requires_grad_(False)
    bn.eval()
    model = nn.Sequential(bn)
    fix(model)
    gn = model[0]
    assert gn.eps == 1e-3 and gn.weight.dtype == F64 and not gn.training
    assert torch.equal(gn.weight, bn.weight) and torch.equal(gn.bias, bn.bias)
    assert gn.weight.requires_grad and not gn.bias.requires_grad
    assert gn.weight is not bn.weight  # a new Parameter: rebuild the optimizer after fix(model)


def test_fix_shared_batchnorm_stays_shared():
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(4, 4), bn, nn.Linear(4, 4), bn)
    assert fix(model) == ["1: BatchNorm1d(4) -> GroupNorm(4, 4)", "3: BatchNorm1d(4) -> GroupNorm(4, 4)"]
    assert model[1] is model[3]


def test_fix_nothing_to_do_and_refusals():
    model = nn.Sequential(nn.Linear(3, 3), nn.GroupNorm(1, 3))
    assert fix(model) == []
    with pytest.raises(ValueError, match="in place"):
        fix(nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="forward"):
        fix(nn.Sequential(nn.LazyBatchNorm2d()))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm-and-activation layer (timm.layers.BatchNormAct2d): batch norm, then drop, then act."""

    def __init__(self, channels):
        super().__init__(channels)
        self.drop, self.act = nn.Identity(), nn.SiLU()

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class ScaledBatchNorm(nn.BatchNorm2d):
    def forward(self, x):
        return 2 * super().forward(x)


def test_fix_keeps_what_a_norm_and_activation_layer_adds():
    """A BatchNorm subclass that also applies an activation keeps it after the GroupNorm (a plain GroupNorm in
    its place would silently drop the activation); any other subclass with a forward of its own is refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8))
    assert fix(model) == ["1: BatchNormAct2d(8) -> GroupNorm(8, 8), then its drop and act"]
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(model(x), F.silu(model[1].norm(model[0](x))))
    assert (model(x) < 0).any() and isinstance(model[1].act, nn.SiLU)
    other = nn.Module()
    other.block = nn.Sequential(nn.Identity(), ScaledBatchNorm(4))
    with pytest.raises(dpcompile.ConfigError, match=r"'block\.1' is a ScaledBatchNorm.*by hand"):
        fix(other)


def test_float16_autocast_refused_and_bfloat16_accepted():
    """A GradScaler's loss scale S would clip each sample to R/S: float16 autocast is refused, saying bf16."""
    model = nn.Linear(4, 2).to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, backend="eager", loss_reduction="sum")
    x = torch.randn(3, 4, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.float16), pytest.raises(dpcompile.ConfigError, match="bfloat16 autocast"):
        dp(x)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        dp(x).float().square().sum().backward()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()


def test_backward_broadcasting_a_symbolic_size_against_another_refused():
    """passes.safety.refuse_batch_broadcasts: a captured backward with an elementwise op that broadcasts a symbolic
    (batch) size against a different size, the shape of a product over a batch of one decomposed with the batch left
    symbolic (which inductor's CPU kernel compiled into reads past a tensor's end), is refused naming the op;
    ordinary broadcasts (against one, or equal symbolic sizes) pass."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    from dpcompile.errors import DPCompileError
    from dpcompile.passes.safety import refuse_batch_broadcasts
    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env)
    s = env.create_symintnode(env.create_symbol(5, ConstantSource("batch"), dynamic_dim=DimDynamic.DYNAMIC), hint=5)

    def graph_of(a_shape, b_shape, out_shape):
        graph = torch.fx.Graph()
        a, b = graph.placeholder("a"), graph.placeholder("b")
        with mode:
            a.meta["val"], b.meta["val"] = torch.empty(*a_shape), torch.empty(*b_shape)
            product = graph.call_function(torch.ops.aten.mul.Tensor, (a, b))
            product.meta["val"] = torch.empty(*out_shape)
        graph.output(product)
        return torch.fx.GraphModule(torch.nn.Module(), graph)
    with pytest.raises(DPCompileError, match="aten.mul.Tensor") as err:
        refuse_batch_broadcasts(graph_of((4, s), (s, 6), (4, 6)), None)
    assert "drop_last" in str(err.value)
    for shapes in (((s, 1), (s, 6), (s, 6)), ((4, 1), (1, 6), (4, 6)), ((s, 6), (6,), (s, 6)), ((2 * s, 3), (2 * s, 3), (2 * s, 3))):
        refuse_batch_broadcasts(graph_of(*shapes), None)


class InputEMA(nn.Module):
    """A running mean of the inputs kept as a buffer; one-head attention makes PyTorch fix a first batch of one."""

    def __init__(self):
        super().__init__()
        self.att, self.fc = nn.MultiheadAttention(4, 1, batch_first=True), nn.Linear(4, 2)
        self.register_buffer("ema", torch.zeros(3, 4))

    def forward(self, x):
        with torch.no_grad():
            self.ema.mul_(0.5).add_(x.mean(0), alpha=0.5)
        return self.fc(self.att(x, x, x, need_weights=False)[0])


class OverwrittenParameter(InputEMA):
    def forward(self, x):
        with torch.no_grad():
            self.fc.bias.copy_(x.mean((0, 1))[:2])
        return self.fc(self.att(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("make,shape", [(InputEMA, (3, 4)), (OverwrittenParameter, (3, 4)),
                                        (lambda: nn.Sequential(nn.InstanceNorm1d(2, affine=True,
                                                                                 track_running_stats=True),
                                                               nn.Flatten(), nn.Linear(8, 2)), (2, 4))])
def test_a_sample_stored_by_a_one_sample_graph_refused(make, shape, backend):
    """A graph PyTorch fixes to one sample has nothing to mix, and the safety pass's layout rules did not run on it:
    a buffer or parameter written from the sample (an input running mean, InstanceNorm's running statistics, a
    parameter overwritten in forward) was accepted at a batch of one, and each noisy step's state_dict held the
    sample's values exactly (found by probing; at two samples the same models were refused). Refused now at a batch
    of one too, naming the write."""
    if backend == "inductor" and isinstance(make(), nn.Sequential):
        pytest.skip("inductor refuses InstanceNorm at a batch of one for its broadcasts (test_odd_sizes)")
    model = make().to(DEVICE, F64)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, backend=backend)
    with pytest.raises(SampleMixingError, match="writes a value computed from the batch into a buffer or parameter"):
        dp(torch.randn(1, *shape, dtype=F64, device=DEVICE) * 1e3).square().sum().backward()


class ByBatch(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fc, self.fn = nn.Linear(2, 1), fn

    def forward(self, x):
        return self.fn(self.fc(x), x)


@pytest.mark.parametrize("name,fn,op", [
    ("mean inside the model", lambda h, x: h / x.shape[0], "aten.div.Tensor"),
    ("scaled by the batch size", lambda h, x: h * 2.0 ** x.shape[0], "batch size"),
    ("clamped at the batch size", lambda h, x: h.clamp(max=x.shape[0]), "aten.clamp"),
    ("parity of the position", lambda h, x: h * (torch.arange(x.shape[0], device=x.device) % 2)[:, None],
     "position in the batch"),
    ("positions by a scan", lambda h, x: h * torch.ones(x.shape[0], 1, device=x.device, dtype=x.dtype).cumsum(0),
     "aten.cumsum"),
])
def test_batch_size_or_position_as_a_value_refused(name, fn, op):
    """x.shape[0] entering values (not shapes): each sample's contribution depends on how many others are in the
    batch, or on its position among them, which the numerical check (one batch size, one order) cannot see. One
    crafted sample moved a release by 1.9R (the mean), 6R (2^B) and 20R (the parity) when probing; refused now."""
    with pytest.raises(SampleMixingError, match=op):
        compile_and_step(ByBatch(fn), torch.randn(4, 2))


class TimesFourToTheBatch(torch.autograd.Function):
    """Identity forward; a hand-written backward that scales by 4^B."""

    @staticmethod
    def forward(ctx, h):
        return h.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 4.0 ** g.shape[0]


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.inductor)])
@pytest.mark.parametrize("name,fn,match", [
    ("a layer added above 3 samples", lambda h, x: h + h.exp() if x.shape[0] > 3 else h,
     r"depends on the batch size: Dynamo guards the batch size by s\d+ (>|<=) 3"),
    ("a layer zeroed below 5 samples", lambda h, x: h if x.shape[0] >= 5 else h * 0,
     r"depends on the batch size: Dynamo guards the batch size by s\d+ (>=|<) 5"),
    ("a hand-written backward scaled by 4^B", lambda h, x: TimesFourToTheBatch.apply(h),
     r"uses the batch size \(x.shape\[0\]\) as a value"),
])
def test_batch_size_in_a_branch_or_a_hand_written_backward_refused(name, fn, match, backend):
    """The batch size reached a sample's gradient outside the forward's values, where batch_size_uses did not look:
    through a Python branch on x.shape[0] (Dynamo guards the batch size and each side compiles a graph of its own)
    and through a custom Function's backward (g · 4^B; torch 2.11 turns a Tensor.register_hook inside forward into
    the same). Removing one sample moved the others' clipped terms: the releases of a batch and of it less one
    sample differed by 1.56R (a layer added above 3 samples), 4.4R (zeroed below 5) and 3.7R (4^B at 5 samples) when
    probing. Refused now, at the batch sizes on both sides of the branch."""
    for B in (6, 2):
        torch._dynamo.reset()
        model = ByBatch(fn).to(DEVICE, F64)
        dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, backend=backend)
        with pytest.raises(SampleMixingError, match=match):
            dp(torch.randn(B, 2, dtype=F64, device=DEVICE)).square().sum().backward()


def test_an_ops_own_choice_by_the_batch_size_is_not_a_branch():
    """PyTorch's CPU convolution picks its oneDNN path at 16 samples or more (its fake function guards B >= 16):
    the same function of each sample on either side, so not refused as a branch of the model's (the first form of
    the branch refusal refused it); the gradients match torch.func on both sides."""
    case = Case("conv_both_sides_of_16", lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(),
                                                               nn.Linear(3 * 16, 2)),
                lambda B: torch.randn(B, 2, 6, 6, dtype=F64))
    check_against_reference(case, batches=(17, 3))


@pytest.mark.parametrize("fn,error", [
    (lambda h, x: torch.view_as_real(torch.view_as_complex(torch.stack([h, h], -1)).unsqueeze(0).sum(1,
                                                                                                      keepdim=True)),
     SampleMixingError),
    (lambda h, x: torch.bucketize(torch.zeros_like(h), h[:, 0].contiguous()).to(h.dtype)[:, None] * h,
     UnsupportedOpError),
])
def test_complex_views_and_bucketize_have_their_own_rules(fn, error):
    """view_as_complex went through the elementwise rule, whose right alignment put a (B, 2) → (B,) result's batch
    at dim −1, so a later sum over the batch passed (21R when probing); bucketize counted as elementwise in its
    boundaries, a search through the whole batch. Both are refused now when they mix; view_as_real/complex keep
    the batch where it is otherwise."""
    with pytest.raises(error):
        compile_and_step(ByBatch(fn), torch.randn(4, 2))


def test_per_sample_complex_views_still_train():
    """A per-sample round trip through complex values matches torch.func."""
    case = Case("complex_round_trip", lambda: ByBatch(
        lambda h, x: torch.view_as_real(torch.view_as_complex(torch.stack([h, 2 * h], -1))).flatten(1)),
        lambda B: torch.randn(B, 2, dtype=F64))
    check_against_reference(case, policy="per_sample")


class Keeps(nn.Module):
    """A model whose forward keeps something of the batch: `how` says what and where."""

    def __init__(self, how):
        super().__init__()
        self.fc, self.how, self.history = nn.Linear(3, 2), how, []
        self.register_buffer("memory", torch.zeros(2))

    def forward(self, x):
        h = self.fc(x)
        if self.how == "attribute":
            self.bank = h.detach()
        elif self.how == "buffer":
            self.memory = h.detach()
        elif self.how == "list":
            self.history.append(h.detach())
        elif self.how == "input":
            self.last = x
        elif self.how == "shape":  # data-free: fine
            self.mask = torch.ones(x.shape[1:], device=x.device)
        return h


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
@pytest.mark.parametrize("how,name", [("attribute", "'bank'"), ("buffer", "'memory'"), ("list", "'history'"),
                                      ("input", "'last'")])
def test_batch_values_kept_by_the_forward_refused(how, name, backend):
    """A forward that keeps a value of the batch (a memory bank, a rebound buffer, a list of activations, the input
    itself) stores it through Dynamo's side effects, which no graph pass sees: a crafted sample of one step moved
    the next step's release by 6R (MoCo-style bank) and 15.7R (a rebound state buffer) when probing, and
    state_dict() held the batch's activations. Refused at the capture's first call, naming the attribute; a
    data-free attribute is fine."""
    dp = dpcompile.dpcompile(Keeps(how).to(DEVICE), max_grad_norm=1.0, noise_multiplier=1.0, backend=backend)
    with pytest.raises(SampleMixingError, match=name):
        dp(torch.randn(4, 3, device=DEVICE)).sum().backward()
    keeps = Keeps("shape").to(DEVICE)
    dp = dpcompile.dpcompile(keeps, max_grad_norm=1.0, noise_multiplier=1.0, backend=backend)
    dp(torch.randn(4, 3, device=DEVICE)).sum().backward()
    assert keeps.fc.weight.grad is not None


class GuardedTanh(torch.autograd.Function):
    """tanh whose hand-written backward, in good faith, zeroes the step when any gradient of the batch is not finite."""

    @staticmethod
    def forward(ctx, h):
        y = torch.tanh(h)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        gi = g * (1 - y * y)
        return torch.where(torch.isfinite(gi).all(), gi, torch.zeros_like(gi))


class NormalisedLinear(torch.autograd.Function):
    """A linear layer whose hand-written backward normalises its weight gradient by the batch's output gradients."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, (g / g.norm()).t() @ x


class HandLinear(torch.autograd.Function):
    """A linear layer with its backward written by hand, per sample (the weight gradient contracts the batch once);
    setup_context apart and a generated vmap rule, as torch.func's reference needs."""
    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return x @ w.t()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, g.t() @ x


@torch.library.custom_op("dpcompile_tests::batch_scaled", mutates_args=(), tags=(torch.Tag.pointwise,))
def batch_scaled(h: torch.Tensor) -> torch.Tensor:
    return h.clone()


@batch_scaled.register_fake
def _(h):
    return torch.empty_like(h)


def _batch_scaled_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _batch_scaled_backward(ctx, g):
    (h,) = ctx.saved_tensors
    return g * (g * h).sum(0, keepdim=True)


batch_scaled.register_autograd(_batch_scaled_backward, setup_context=_batch_scaled_setup)


class ThroughFunction(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.fc, self.head, self.how = nn.Linear(2, 3), nn.Linear(3, 1), how
        self.w = nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        h = self.fc(x)
        if self.how == "nan_guard":
            h = GuardedTanh.apply(h)
        elif self.how == "normalised_weight":
            h = NormalisedLinear.apply(h, self.w)
        elif self.how == "hand_linear":
            h = HandLinear.apply(h, self.w)
        else:
            h = batch_scaled(h)
        return self.head(h)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
@pytest.mark.parametrize("how,source", [("nan_guard", "autograd.Function"), ("normalised_weight", "autograd.Function"),
                                        ("custom_op", "dpcompile_tests.batch_scaled")])
def test_hand_written_backward_that_mixes_samples_refused(how, source, backend):
    """A backward written by hand that mixes samples (a NaN guard over the batch: one sample with an inf input zeroed
    the other ten, 10R; a weight gradient normalised by the batch's norm, 9.5R; a torch.library op's registered
    backward scaling by a batch sum, 19R, never checked at all) passed the numerical check, which changes one
    sample once and only for autograd.Functions' input gradients. The forward's layout rules now run over the
    hand-written part of the backward graph."""
    dp = dpcompile.dpcompile(ThroughFunction(how).to(DEVICE, F64), max_grad_norm=1.0, noise_multiplier=0.0,
                             backend=backend)
    with pytest.raises(SampleMixingError, match=f"backward written by hand for .*{source}"):
        dp(torch.randn(4, 2, dtype=F64, device=DEVICE)).sum().backward()


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
def test_hand_written_per_sample_backward_still_trains(backend):
    """A linear layer whose backward is written by hand, per sample (its weight gradient one product over the
    batch, a parameter's term like autograd's), trains and matches torch.func, both clip branches."""
    check_against_reference(Case("hand_linear", lambda: ThroughFunction("hand_linear"),
                                 lambda B: torch.randn(B, 2, dtype=F64)), policy="mixed", backend=backend)


def test_diagonal_gather_by_the_batch_arange_trains_and_a_shuffle_is_refused():
    """h[arange(B)[:, None], j] with j free of the batch reads row i of h for sample i (Hugging Face's padding masks
    are built so): trains, matching torch.func. The same with a flipped arange, or with an index that differs by
    batch position, moves rows across samples: refused."""
    def diagonal(h, x):
        rows = torch.arange(h.shape[0], device=h.device)[:, None]
        return h[rows, torch.tensor([[0, 0, 1]], device=h.device)]
    check_against_reference(Case("diagonal_gather", lambda: ByBatch(lambda h, x: diagonal(h.expand(-1, 2) * x, x)),
                                 lambda B: torch.randn(B, 2, dtype=F64)), policy="per_sample")
    flipped = lambda h, x: h[torch.arange(h.shape[0], device=h.device).flip(0)]  # noqa: E731
    with pytest.raises(SampleMixingError):
        compile_and_step(ByBatch(flipped), torch.randn(4, 2))
    by_position = lambda h, x: (h.expand(-1, 2) * x)[torch.arange(h.shape[0], device=h.device)[:, None],  # noqa: E731
                                                       torch.arange(h.shape[0], device=h.device)[:, None] % 2]
    with pytest.raises(SampleMixingError):
        compile_and_step(ByBatch(by_position), torch.randn(4, 2))
