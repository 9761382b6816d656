"""Layers of Opacus's per-sample-gradient test grid that dpcompile refused falsely (issue 9), against
torch.func in float64.

The layers and input shapes come from Opacus's tests (https://github.com/pytorch/opacus,
opacus/tests/grad_samples/: embedding_test.py, sequence_bias_test.py, instance_norm{1,2,3}d_test.py,
multihead_attention_test.py; Apache License 2.0), trimmed to small sizes. Opacus feeds batch-second
inputs (T, N, ...) to the layer; dpcompile's batch is dim 0 of the model's argument, so those models
transpose inside.
"""
from __future__ import annotations

import pytest
import torch
from helpers import Case, check_against_reference
from torch import nn


class BatchSecond(nn.Module):
    """The layer sees (T, N, ...) (Opacus's batch_first=False); the model's argument and output are batch-first."""

    def __init__(self, layer: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.layer, self.head = layer, head or nn.Identity()

    def forward(self, x):
        y = self.layer(x.transpose(0, 1))
        return self.head(y[0] if isinstance(y, tuple) else y).transpose(0, 1)


class SequenceBias(nn.Module):
    """Opacus's opacus.layers.SequenceBias: a learned step appended to every sequence, the bias
    repeated over the batch (`.repeat(N, 1, 1)` batch-first, `.repeat(1, N, 1)` batch-second)."""

    def __init__(self, width: int, batch_first: bool):
        super().__init__()
        self.batch_first = batch_first
        self.bias = nn.Parameter(torch.randn(width))

    def forward(self, x):
        if self.batch_first:
            return torch.cat([x, self.bias.repeat(x.shape[0], 1, 1)], 1)
        return torch.cat([x, self.bias.repeat(1, x.shape[1], 1)])


def floats(*shape):
    return lambda B: torch.randn(B, *shape, dtype=torch.float64)


class MHA(nn.Module):
    def __init__(self, heads: int):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, heads)

    def forward(self, x):  # (N, T, D) -> the module's (T, N, D)
        y = x.transpose(0, 1)
        return self.mha(y, y, y)[0].transpose(0, 1)


CASES = [
    Case("embedding_batch_second", lambda: BatchSecond(nn.Embedding(10, 12), nn.Linear(12, 3)),
         lambda B: torch.randint(0, 10, (B, 5))),
    Case("sequence_bias_batch_first", lambda: nn.Sequential(SequenceBias(4, True), nn.Linear(4, 2)), floats(6, 4)),
    Case("sequence_bias_batch_second", lambda: BatchSecond(SequenceBias(4, False), nn.Linear(4, 2)), floats(6, 4)),
]
ONE_SAMPLE = [  # a batch of one (mid-training, as from a Poisson loader) compiles a graph guarded to B = 1
    Case("instance_norm1d", lambda: nn.Sequential(nn.InstanceNorm1d(3, affine=True)), floats(3, 7)),
    Case("instance_norm2d", lambda: nn.Sequential(nn.InstanceNorm2d(2, affine=True)), floats(2, 4, 5)),
    Case("instance_norm3d", lambda: nn.Sequential(nn.InstanceNorm3d(2, affine=True)), floats(2, 3, 3, 4)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_grid_layer(case):
    check_against_reference(case)


@pytest.mark.parametrize("case", ONE_SAMPLE, ids=lambda c: c.name)
def test_grid_layer_batch_of_one(case):
    check_against_reference(case, batches=(3, 1, 2), bound=1e-3, max_compilations=2)


def test_multihead_attention_one_head_batch_of_one():
    check_against_reference(Case("mha_one_head", lambda: MHA(1), floats(5, 8)), batches=(1,), bound=1e-3)
