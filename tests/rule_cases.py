"""Test cases per rule family. Every family in the rule table must have cases here."""
from __future__ import annotations

import torch
from helpers import Case
from torch import nn


def seq(*layers):
    return lambda: nn.Sequential(*layers)


def images(c, *spatial):
    return lambda B: torch.randn(B, c, *spatial, dtype=torch.float64)


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
        Case("cnn_head", seq(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)), images(3, 6, 6)),
    ],
    "reduction": [
        Case("prelu", seq(nn.Linear(5, 4, bias=False), nn.PReLU()), lambda B: torch.randn(B, 5, dtype=torch.float64)),
        Case("prelu_channels", seq(nn.Conv2d(2, 3, 1, bias=False), nn.PReLU(3)), images(2, 3, 3)),
    ],
}
