"""Odd sizes (1 to 17, and a 50257-wide vocabulary) for Linear, Embedding and Conv2d, against torch.func in
float64, under both methods (the mixed policy picks one of them per layer; ghost and per-sample are forced
here so that each size runs through both). On the GPU, DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor
runs this sweep through inductor (issue 9: CUDA's padded matmuls refused Linear(32, 5) and 50257-wide heads)."""
import pytest
import torch
from conftest import DEVICE
from helpers import Case, check_against_reference, check_bf16_autocast
from torch import nn

F64 = torch.float64
METHODS = ["ghost", "per_sample"]
VOCAB = 50257  # GPT-2's vocabulary


def linear_case(d_in: int, d_out: int, T: int | None, bias: bool) -> Case:
    shape = (d_in,) if T is None else (T, d_in)
    return Case(f"linear_{shape}_{d_out}", lambda: nn.Linear(d_in, d_out, bias=bias),
                lambda B: torch.randn(B, *shape, dtype=F64))


class Lookup(nn.Module):
    def __init__(self, num: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(num, dim)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx)


def embedding_case(num: int, dim: int, T: int) -> Case:
    return Case(f"embedding_{num}_{dim}_T{T}", lambda: Lookup(num, dim), lambda B: torch.randint(0, num, (B, T)))


def conv_case(c_in: int, c_out: int, k: int, size: int, stride: int = 1, padding: int = 0) -> Case:
    return Case(f"conv_{c_in}_{c_out}_k{k}_{size}", lambda: nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding),
                lambda B: torch.randn(B, c_in, size, size, dtype=F64))


# (d_in, d_out, T, bias): widths 1, odd and just past powers of two, and issue 9's Linear(32, 5, bias=False) on
# (B, T, 32); T None means a (B, d) input
LINEARS = [(1, 1, None, True), (1, 17, None, False), (17, 1, None, True), (5, 10, None, False), (16, 17, None, True),
           (3, 5, 1, False), (1, 10, 7, True), (17, 1, 5, False), (17, 16, 2, True), (32, 5, 4, False)]
# (num_embeddings, embedding_dim, T)
EMBEDDINGS = [(1, 1, 1), (17, 5, 7), (10, 17, 1), (3, 1, 16)]
# (c_in, c_out, kernel, input size, stride, padding)
CONVS = [(1, 1, 1, 1, 1, 0), (3, 5, 3, 7, 1, 0), (1, 17, 2, 5, 2, 1), (17, 1, 3, 3, 1, 1)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("d_in, d_out, T, bias", LINEARS, ids=[f"{a}-{b}-T{t}" for a, b, t, _ in LINEARS])
def test_linear(d_in, d_out, T, bias, method):
    check_against_reference(linear_case(d_in, d_out, T, bias), policy=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("num, dim, T", EMBEDDINGS, ids=[f"{n}-{d}-T{t}" for n, d, t in EMBEDDINGS])
def test_embedding(num, dim, T, method):
    check_against_reference(embedding_case(num, dim, T), policy=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("c_in, c_out, k, size, stride, padding", CONVS,
                         ids=[f"{c[0]}-{c[1]}-k{c[2]}-{c[3]}" for c in CONVS])
def test_conv2d(c_in, c_out, k, size, stride, padding, method):
    check_against_reference(conv_case(c_in, c_out, k, size, stride, padding), policy=method)


# --- a 50257-wide output on a tiny batch (a language model's head and embedding) ---

@pytest.mark.parametrize("policy", ["mixed", *METHODS])
@pytest.mark.parametrize("T", [None, 3], ids=["B_d", "B_T_d"])
def test_vocabulary_wide_linear(T, policy):
    check_against_reference(linear_case(3, VOCAB, T, bias=True), policy=policy, batches=(2, 3))


@pytest.mark.parametrize("policy", ["mixed", *METHODS])
def test_vocabulary_wide_embedding(policy):
    check_against_reference(embedding_case(VOCAB, 3, 4), policy=policy, batches=(2, 3))



# --- the same sizes under bf16 autocast (fp32 parameters): accepted, and within bf16's own error ---

BF16_CASES = ([linear_case(*c) for c in LINEARS] + [embedding_case(*c) for c in EMBEDDINGS]
              + [conv_case(*c) for c in CONVS])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: c.name)
def test_bf16_autocast_odd_sizes(case, method):
    """bf16 autocast on every odd size: no refusal, and dpcompile's gradient is as close to its fp32 run as bf16
    allows (10 × the plain model's bf16 error, or 15%: a ghost clipped sum's bf16 operand over-clips by up to
    about 11% on random data, README)."""
    check_bf16_autocast(case, method)


# --- a first batch of one (a Poisson batch can have one sample) through normalisations and embeddings ---

def _clipping_bound(case: Case, B: int) -> float:
    """Half the smallest per-sample norm of the first batch check_against_reference draws (same seeds): every sample
    clipped (clip_bound_between needs two samples)."""
    from helpers import batch_for
    from reference import per_sample_grads
    torch.manual_seed(0)
    model = case.model().to(DEVICE, F64)
    x, y = batch_for(case, model, B, seed=1)
    g = per_sample_grads(model, x, y, case.loss)
    return 0.5 * torch.sqrt(sum(v.reshape(len(v), -1).square().sum(1) for v in g.values())).min().item()


ONE_FIRST = ("instance_norm1d", "instance_norm2d", "instance_norm3d", "linear_instance_norm", "group_norm",
             "layer_norm", "embedding", "embedding_sequence_first")


def one_first_case(name: str) -> Case:
    """rule_cases' case of that name (imported here: its import seeds the generator for its layers), or a linear
    layer before InstanceNorm."""
    if name == "linear_instance_norm":
        return Case(name, lambda: nn.Sequential(nn.Linear(4, 4, bias=False), nn.InstanceNorm1d(2, affine=True)),
                    lambda B: torch.randn(B, 2, 4, dtype=F64))
    from rule_cases import CASES
    return next(c for cases in CASES.values() for c in cases if c.name == name)


@pytest.mark.parametrize("policy", METHODS)
@pytest.mark.parametrize("batches", [(1,), (1, 3)], ids=["1", "1_3"])
@pytest.mark.parametrize("name", ONE_FIRST)
def test_first_batch_of_one(name, batches, policy):
    """A model whose first batch has one sample, then three. At a batch of one PyTorch guards InstanceNorm's graph to
    one sample, where the norm's bias gradient (grad_out summed over the sample's positions, a one-sample term) is
    also the mean its input gradient subtracts: the rewrite held back everything computed from that term until the
    clipped sums, and the layer below's weight term then read nodes not yet copied (KeyError view_3 for a
    convolution, permute_1 for a linear layer); had they been copied, the input gradient would have read the clipped
    sum instead of the sample's own gradient. Now the input gradient reads the term as it stands and only the ops
    between the terms and the released gradients read the clipped sums (rewrite.between_terms_and_release,
    read_unclipped). GroupNorm, LayerNorm and embeddings (never broken) ride along."""
    case = one_first_case(name)
    check_against_reference(case, policy=policy, batches=batches, backend="eager", bound=_clipping_bound(case, 1),
                            max_compilations=2)


@pytest.mark.inductor
@pytest.mark.parametrize("name", ["instance_norm1d", "instance_norm3d"])
@pytest.mark.parametrize("batches", [(1, 3), (3, 1)])
def test_first_batch_of_one_instance_norm_inductor(name, batches):
    """Through inductor, InstanceNorm's graph for a batch of one broadcasts the symbolic batch in its captured
    backward, which inductor's kernel misreads (safety.refuse_batch_broadcasts refused it, and the refusal then
    failed every later batch size too). The graph is guarded to one sample, where the broadcast is valid: it runs
    without inductor now, and matches torch.func, before and after other batch sizes."""
    case = one_first_case(name)
    check_against_reference(case, policy="mixed", batches=batches, backend="inductor",
                            bound=_clipping_bound(case, batches[0]), max_compilations=2)
