"""Odd sizes (1 to 17, and a 50257-wide vocabulary) for Linear, Embedding and Conv2d, against torch.func in
float64, under both methods (the mixed policy picks one of them per layer; ghost and per-sample are forced
here so that each size runs through both). On the GPU, DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor
runs this sweep through inductor (issue 9: CUDA's padded matmuls refused Linear(32, 5) and 50257-wide heads)."""
import pytest
import torch
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
