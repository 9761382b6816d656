"""Test cases per rule family. Every family in the rule table must have cases here."""
from __future__ import annotations

import torch
from helpers import Case
from torch import nn


def seq(*layers):
    return lambda: nn.Sequential(*layers)


def images(c, *spatial):
    return lambda B: torch.randn(B, c, *spatial, dtype=torch.float64)


def tokens(vocab, length):
    return lambda B: torch.randint(0, vocab, (B, length))


def sequences(length, width):
    return lambda B: torch.randn(B, length, width, dtype=torch.float64)


class RawParameters(nn.Module):
    """Parameters used directly in the forward, not through a module: the rule follows the op."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.w = nn.Parameter(torch.randn(6, 4) / 2)
        self.b = nn.Parameter(torch.randn(4) / 2)
        self.token = nn.Parameter(torch.randn(1, 1, 6))
        self.pos = nn.Parameter(torch.randn(1, 6, 6))
        self.scale = nn.Parameter(torch.rand(6) + 0.5)
        used = {"einsum": "w", "bmm": "w", "token_pos_scale": "token pos scale"}.get(kind, "w b").split()
        for name, p in self.named_parameters():
            p.requires_grad_(name in used)

    def forward(self, x):  # x: (B, 5, 6)
        w, b, B = self.w, self.b, x.shape[0]
        if self.kind == "matmul":
            return x @ w + b
        if self.kind == "einsum":
            return torch.einsum("btd,dp->btp", x, w)
        if self.kind == "functional_linear":
            return torch.nn.functional.linear(x, w.t(), b)
        if self.kind == "addmm":
            return torch.addmm(b, x[:, 0], w)
        if self.kind == "bmm":
            return torch.bmm(x, w.expand(B, 6, 4))
        if self.kind == "baddbmm":
            return torch.baddbmm(b.expand(B, 5, 4), x, w.expand(B, 6, 4))
        # class token, position embedding and layer scale, as in a ViT
        return (torch.cat([self.token.expand(B, -1, -1), x], 1)[:, :6] + self.pos) * self.scale


class Shared(nn.Module):
    """One parameter used several times: its per-sample gradient is the sum of its uses."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(6, 6)
        self.emb = nn.Embedding(10, 6)
        (self.lin if kind == "tied_embedding" else self.emb).requires_grad_(False)

    def forward(self, x):
        if self.kind == "block_twice":
            return self.lin(torch.tanh(self.lin(x)))
        if self.kind == "tied_embedding":  # GPT-style: the output layer is the embedding table
            return self.emb(x) @ self.emb.weight.t()
        return self.lin(x) @ self.lin.weight[:, :4]  # a slice of a weight reused


CASES: dict[str, list[Case]] = {
    "linear": [
        Case("linear_2d", seq(nn.Linear(7, 5)), lambda B: torch.randn(B, 7, dtype=torch.float64)),
        Case("linear_nobias", seq(nn.Linear(7, 5, bias=False), nn.Tanh(), nn.Linear(5, 3)),
             lambda B: torch.randn(B, 7, dtype=torch.float64)),
        Case("linear_3d", seq(nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 3)), lambda B: torch.randn(B, 5, 6, dtype=torch.float64)),
        Case("linear_4d", seq(nn.Linear(6, 4, bias=False)), lambda B: torch.randn(B, 2, 3, 6, dtype=torch.float64)),
    ],
    "conv": [
        Case("conv2d_stride_pad", seq(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 2)), images(3, 7, 6)),
        Case("conv2d_dilation_groups", seq(nn.Conv2d(4, 6, 3, dilation=2, groups=2, bias=False)), images(4, 8, 8)),
        Case("conv2d_depthwise", seq(nn.Conv2d(4, 4, 3, groups=4, padding="same"), nn.Conv2d(4, 8, 1)), images(4, 6, 6)),
        Case("conv2d_same_even", seq(nn.Conv2d(2, 3, 4, padding="same")), images(2, 5, 5)),
        Case("conv2d_valid", seq(nn.Conv2d(2, 3, (2, 3), padding="valid", stride=(1, 2))), images(2, 5, 7)),
        Case("conv1d", seq(nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), nn.ReLU(), nn.Conv1d(4, 4, 2, groups=2)),
             images(3, 11)),
        Case("conv3d", seq(nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=1), nn.ReLU(), nn.Conv3d(3, 3, 1, groups=3)),
             images(2, 4, 5, 3)),
        Case("conv_transposed2d", seq(nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)),
             images(4, 5, 4)),
        Case("conv_transposed1d", seq(nn.ConvTranspose1d(3, 2, 4, stride=3, dilation=2, bias=False)), images(3, 5)),
        Case("conv_transposed3d", seq(nn.ConvTranspose3d(2, 3, 2, stride=(1, 2, 1))), images(2, 3, 3, 2)),
        Case("cnn_head", seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)), images(3, 6, 6)),
    ],
    "embedding": [
        Case("embedding", seq(nn.Embedding(10, 6), nn.Linear(6, 3)), tokens(10, 5)),
        Case("embedding_padding_idx", seq(nn.Embedding(7, 4, padding_idx=0)), tokens(7, 6)),
        Case("embedding_2d_indices", seq(nn.Embedding(9, 3)), lambda B: torch.randint(0, 9, (B, 2, 3))),
    ],
    "raw_parameters": [Case(f"raw_{k}", lambda k=k: RawParameters(k), sequences(5, 6)) for k in
                       ("matmul", "einsum", "functional_linear", "addmm", "bmm", "baddbmm", "token_pos_scale")],
    "shared_parameters": [
        Case("block_twice", lambda: Shared("block_twice"), sequences(5, 6)),
        Case("tied_embedding", lambda: Shared("tied_embedding"), tokens(10, 5)),
        Case("weight_slice_reused", lambda: Shared("slice"), sequences(5, 6)),
    ],
    "reduction": [
        Case("prelu", seq(nn.Linear(5, 4, bias=False), nn.PReLU()), lambda B: torch.randn(B, 5, dtype=torch.float64)),
        Case("prelu_channels", seq(nn.Conv2d(2, 3, 1, bias=False), nn.PReLU(3)), images(2, 3, 3)),
    ],
}
