"""Every architecture in examples/models.py builds at a tiny size and runs forward (and backward) on CPU."""
import os
import sys

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import models as zoo  # noqa: E402

B = 2

CASES = {
    "resnet18_gn_32": (lambda: zoo.resnet18_gn(10, small_input=True, width=8), lambda: torch.randn(B, 3, 32, 32), (B, 10)),
    "resnet18_gn_224": (lambda: zoo.resnet18_gn(7, small_input=False, width=8), lambda: torch.randn(B, 3, 64, 64), (B, 7)),
    "resnet18_gn_outofplace": (lambda: zoo.resnet18_gn(10, width=8, inplace_residual=False), lambda: torch.randn(B, 3, 16, 16), (B, 10)),
    "resnet50_gn": (lambda: zoo.resnet50_gn(5, width=8), lambda: torch.randn(B, 3, 64, 64), (B, 5)),
    "wrn16_4": (lambda: zoo.wrn16_4(10, widen=1), lambda: torch.randn(B, 3, 32, 32), (B, 10)),
    "small_cnn": (lambda: zoo.small_cnn(10, width=8), lambda: torch.randn(B, 3, 32, 32), (B, 10)),
    "vit": (lambda: zoo.vit(image_size=16, patch=4, dim=24, depth=2, heads=3, num_classes=10), lambda: torch.randn(B, 3, 16, 16), (B, 10)),
    "vit_s16": (lambda: zoo.vit_s16(num_classes=4, image_size=32), lambda: torch.randn(B, 3, 32, 32), (B, 4)),
    "gpt_small": (lambda: zoo.gpt_small(vocab=50, dim=16, depth=2, heads=2, seq_len=12), lambda: torch.randint(0, 50, (B, 12)), (B, 12, 50)),
    "convnext_block_model": (lambda: zoo.convnext_block_model(10, dims=(8, 16), blocks=1), lambda: torch.randn(B, 3, 16, 16), (B, 10)),
    "mobilenet_block_model": (lambda: zoo.mobilenet_block_model(10, width=8), lambda: torch.randn(B, 3, 32, 32), (B, 10)),
    "text_conv1d": (lambda: zoo.text_conv1d(vocab=100, embed_dim=8, channels=8, num_classes=3), lambda: torch.randint(0, 100, (B, 20)), (B, 3)),
    "conv3d_model": (lambda: zoo.conv3d_model(10, in_channels=1, width=8), lambda: torch.randn(B, 1, 8, 16, 16), (B, 10)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_backward(name):
    build, make_input, out_shape = CASES[name]
    torch.manual_seed(0)
    model = build()
    out = model(make_input())
    assert out.shape == out_shape
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())


def test_real_sizes_parameter_counts():
    """The full-size builders match the published parameter counts (torchvision / WRN / ViT-S)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(zoo.resnet18_gn(1000, small_input=False)) == 11_689_512
    assert count(zoo.resnet50_gn(1000)) == 25_557_032
    assert abs(count(zoo.wrn16_4(10)) - 2.75e6) < 0.01e6
    assert abs(count(zoo.vit_s16(1000)) - 22.05e6) < 0.01e6


def test_gpt_tied_and_vit_free_parameters():
    g = zoo.gpt_small(vocab=50, dim=16, depth=1, heads=2, seq_len=8)
    assert g.head.weight is g.tok.weight
    names = [n for n, _ in g.named_parameters()]
    assert "head.weight" not in names and "tok.weight" in names     # one Parameter, listed once
    v = zoo.vit(image_size=8, patch=4, dim=12, depth=1, heads=2)
    assert isinstance(v.cls_token, nn.Parameter) and isinstance(v.pos_embed, nn.Parameter)
