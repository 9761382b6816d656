"""Real architectures in plain torch, for the examples, the tests and the benchmarks.

Every builder returns an ``nn.Module``. None uses BatchNorm (it mixes samples, so per-sample
gradients would not exist): GroupNorm or LayerNorm instead. No ReLU is in place. The ResNets keep
torchvision's in-place residual ``out += identity`` by default (``inplace_residual=True``), as the
peers' measurements used it; pass ``inplace_residual=False`` for an out-of-place add.

Builders: resnet18_gn, resnet50_gn, wrn16_4, small_cnn, vit, vit_s16, gpt_small,
convnext_block_model, mobilenet_block_model, text_conv1d, conv3d_model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "gn", "WSConv2d", "resnet18_gn", "resnet50_gn", "wrn16_4", "small_cnn", "vit", "vit_s16", "gpt_small",
    "convnext_block_model", "mobilenet_block_model", "text_conv1d", "conv3d_model",
]


def gn(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with min(groups, channels) groups (channels must divide evenly)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


# ----------------------------------------------------------------------------------------------
# ResNet (torchvision layout, GroupNorm in place of BatchNorm)
# ----------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """torchvision BasicBlock: conv3x3-GN-ReLU-conv3x3-GN, + identity, ReLU."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1, downsample: nn.Module | None = None,
                 inplace_residual: bool = True):
        super().__init__()
        self.conv1 = conv3x3(c_in, width, stride)
        self.bn1 = gn(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = gn(width)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.inplace_residual = inplace_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(add_residual(out, identity, self.inplace_residual))


def add_residual(out: torch.Tensor, identity: torch.Tensor, inplace: bool) -> torch.Tensor:
    """out + identity; in place as torchvision does (`out += identity`), which Opacus's hooks reject."""
    if inplace:
        out += identity
        return out
    return out + identity


class Bottleneck(nn.Module):
    """torchvision Bottleneck (v1.5: stride on the 3x3): 1x1-3x3-1x1 with GN, + identity, ReLU."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, downsample: nn.Module | None = None,
                 inplace_residual: bool = True):
        super().__init__()
        self.conv1 = conv1x1(c_in, width)
        self.bn1 = gn(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = gn(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = gn(width * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.inplace_residual = inplace_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(add_residual(out, identity, self.inplace_residual))


class ResNet(nn.Module):
    """torchvision-style ResNet with GroupNorm. small_input: 3x3 stride-1 stem, no max-pool."""

    def __init__(self, block, layers, num_classes: int = 1000, small_input: bool = False,
                 width: int = 64, inplace_residual: bool = True):
        super().__init__()
        self.inplace_residual = inplace_residual
        self.c = width
        if small_input:
            self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = gn(width)
        self.relu = nn.ReLU()
        self.layer1 = self._layer(block, width, layers[0], 1)
        self.layer2 = self._layer(block, width * 2, layers[1], 2)
        self.layer3 = self._layer(block, width * 4, layers[2], 2)
        self.layer4 = self._layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _layer(self, block, w: int, n: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.c != w * block.expansion:
            down = nn.Sequential(conv1x1(self.c, w * block.expansion, stride), gn(w * block.expansion))
        blocks = [block(self.c, w, stride, down, self.inplace_residual)]
        self.c = w * block.expansion
        blocks += [block(self.c, w, inplace_residual=self.inplace_residual) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_gn(num_classes: int = 10, small_input: bool = True, width: int = 64,
                inplace_residual: bool = True) -> nn.Module:
    """ResNet-18 (BasicBlock, [2,2,2,2]) with GroupNorm. small_input=True for 32x32 images
    (3x3 stride-1 stem, no max-pool); False for 224x224 (7x7 stride-2 stem + max-pool)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, small_input, width, inplace_residual)


def resnet50_gn(num_classes: int = 1000, small_input: bool = False, width: int = 64,
                inplace_residual: bool = True) -> nn.Module:
    """ResNet-50 (Bottleneck, [3,4,6,3]) with GroupNorm, for 224x224 inputs."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, small_input, width, inplace_residual)


# ----------------------------------------------------------------------------------------------
# WideResNet
# ----------------------------------------------------------------------------------------------

class WSConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (Qiao et al. 2019): each output channel's kernel shifted to mean 0
    and scaled to variance 1 before the convolution, gradients flowing through the statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean((1, 2, 3), keepdim=True)
        var = w.var((1, 2, 3), keepdim=True, unbiased=False)
        return self._conv_forward(x, (w - mean) * torch.rsqrt(var + 1e-5), self.bias)


def wrn_conv(c_in: int, c_out: int, kernel: int, stride: int, standardise: bool) -> nn.Conv2d:
    """A bias-free WRN convolution ('same' padding), weight-standardised or plain."""
    return (WSConv2d if standardise else nn.Conv2d)(c_in, c_out, kernel, stride, kernel // 2, bias=False)


class WideBlock(nn.Module):
    """Pre-activation wide block: GN-ReLU-conv3x3-GN-ReLU-conv3x3, + (projected) input."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int = 32, standardise: bool = False):
        super().__init__()
        self.bn1 = gn(c_in, groups)
        self.conv1 = wrn_conv(c_in, c_out, 3, stride, standardise)
        self.bn2 = gn(c_out, groups)
        self.conv2 = wrn_conv(c_out, c_out, 3, 1, standardise)
        self.relu = nn.ReLU()
        self.shortcut = None if (c_in == c_out and stride == 1) else wrn_conv(c_in, c_out, 1, stride, standardise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


def wrn16_4(num_classes: int = 10, depth: int = 16, widen: int = 4, base: int = 16, groups: int = 32,
            standardise: bool = False) -> nn.Module:
    """WideResNet-16-4 (Zagoruyko & Komodakis) with GroupNorm, for 32x32 images. base: the stem's
    width (16 in the paper; stages base·widen, 2·base·widen, 4·base·widen); a small base gives a
    tiny WRN-16-4 with the same layout for tests. groups: GroupNorm's groups (De et al. 2022: 16);
    standardise: weight-standardised convolutions (De et al. 2022)."""
    n = (depth - 4) // 6
    widths = [base, base * widen, 2 * base * widen, 4 * base * widen]
    layers: list[nn.Module] = [wrn_conv(3, widths[0], 3, 1, standardise)]
    c = widths[0]
    for i, w in enumerate(widths[1:]):
        for j in range(n):
            layers.append(WideBlock(c, w, (1 if i == 0 else 2) if j == 0 else 1, groups, standardise))
            c = w
    layers += [gn(c, groups), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------
# Small CIFAR CNN
# ----------------------------------------------------------------------------------------------

def small_cnn(num_classes: int = 10, width: int = 32, in_channels: int = 3) -> nn.Module:
    """Four conv-GN-ReLU layers (32x32 -> 4x4) + global average pool + linear; ~0.3M parameters
    at width 32. Trains to well above chance on a few thousand CIFAR-10 images on a CPU."""
    w = [width, 2 * width, 4 * width, 4 * width]
    return nn.Sequential(
        nn.Conv2d(in_channels, w[0], 3, padding=1), gn(w[0], 8), nn.ReLU(),
        nn.Conv2d(w[0], w[1], 3, stride=2, padding=1), gn(w[1], 8), nn.ReLU(),
        nn.Conv2d(w[1], w[2], 3, stride=2, padding=1), gn(w[2], 8), nn.ReLU(),
        nn.Conv2d(w[2], w[3], 3, stride=2, padding=1), gn(w[3], 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w[3], num_classes),
    )


# ----------------------------------------------------------------------------------------------
# Transformers
# ----------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention: q, k, v from one nn.Linear, F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        assert dim % heads == 0, "dim must be divisible by heads"
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)); x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal)
        self.ln2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Vision Transformer: conv patch embedding, class token and position embedding held as
    nn.Parameter on this module (used outside any layer), pre-norm blocks, head on the class token."""

    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int,
                 num_classes: int, mlp_ratio: float = 4.0, in_channels: int = 3):
        super().__init__()
        assert image_size % patch == 0, "image_size must be a multiple of patch"
        n = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)          # (B, N, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(image_size: int = 32, patch: int = 4, dim: int = 192, depth: int = 6, heads: int = 3,
        num_classes: int = 10, mlp_ratio: float = 4.0) -> nn.Module:
    """ViT; defaults: ViT-Tiny widths (dim 192, 3 heads), 6 blocks, 4x4 patches on 32x32 images."""
    return ViT(image_size, patch, dim, depth, heads, num_classes, mlp_ratio)


def vit_s16(num_classes: int = 1000, image_size: int = 224) -> nn.Module:
    """ViT-S/16: dim 384, 12 blocks, 6 heads, MLP 1536, 16x16 patches on 224x224 images."""
    return ViT(image_size, 16, 384, 12, 6, num_classes)


class GPT(nn.Module):
    """Decoder-only transformer: token embedding tied with the output layer (one Parameter),
    learned position embedding (nn.Parameter), causal SDPA, pre-norm blocks, final LayerNorm."""

    def __init__(self, vocab: int, dim: int, depth: int, heads: int, seq_len: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, causal=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight                           # tied: the same Parameter

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) token ids, T <= seq_len -> logits (B, T, vocab)."""
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def gpt_small(vocab: int = 8192, dim: int = 256, depth: int = 4, heads: int = 4,
              seq_len: int = 128) -> nn.Module:
    """A small GPT (tied embeddings, learned positions, causal attention). Returns (B, T, vocab)."""
    return GPT(vocab, dim, depth, heads, seq_len)


# ----------------------------------------------------------------------------------------------
# ConvNeXt and MobileNet blocks
# ----------------------------------------------------------------------------------------------

class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 conv, LayerNorm over channels (channels-last), Linear 4x,
    GELU, Linear back, layer scale gamma (nn.Parameter), residual."""

    def __init__(self, dim: int, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)                       # (B, H, W, C)
        y = self.gamma * self.pw2(self.act(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def convnext_block_model(num_classes: int = 10, dims: tuple[int, ...] = (32, 64), blocks: int = 2,
                         stem_patch: int = 2, layer_scale: float = 1e-6) -> nn.Module:
    """Small ConvNeXt: patchify stem (conv k=s=stem_patch) + LayerNorm, stages of ConvNeXt blocks
    separated by LayerNorm + 2x2 stride-2 conv, global pool, LayerNorm, linear head."""
    layers: list[nn.Module] = [nn.Conv2d(3, dims[0], stem_patch, stride=stem_patch), LayerNorm2d(dims[0])]
    for i, d in enumerate(dims):
        if i > 0:
            layers += [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], d, 2, stride=2)]
        layers += [ConvNeXtBlock(d, layer_scale) for _ in range(blocks)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], num_classes)]
    return nn.Sequential(*layers)


def dw_separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """MobileNet-v1 block: depthwise 3x3 conv (groups=C_in)-GN-ReLU, pointwise 1x1-GN-ReLU."""
    return nn.Sequential(
        conv3x3(c_in, c_in, stride, groups=c_in), gn(c_in, 8), nn.ReLU(),
        conv1x1(c_in, c_out), gn(c_out, 8), nn.ReLU(),
    )


def mobilenet_block_model(num_classes: int = 10, width: int = 32) -> nn.Module:
    """Small MobileNet-v1-style net for 32x32 images: a 3x3 stem, five depthwise-separable
    blocks with GroupNorm, global pool, linear head."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1, bias=False), gn(w, 8), nn.ReLU(),
        dw_separable(w, 2 * w, 1), dw_separable(2 * w, 4 * w, 2), dw_separable(4 * w, 4 * w, 1),
        dw_separable(4 * w, 8 * w, 2), dw_separable(8 * w, 8 * w, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes),
    )


# ----------------------------------------------------------------------------------------------
# Text and 3-D
# ----------------------------------------------------------------------------------------------

class TextConv1d(nn.Module):
    """Kim-style text CNN: Embedding, Conv1d per kernel size, ReLU, max over time, concat, linear."""

    def __init__(self, vocab: int, embed_dim: int, channels: int, kernel_sizes, num_classes: int,
                 padding_idx: int | None = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim, padding_idx=padding_idx)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k) for k in kernel_sizes)
        self.fc = nn.Linear(channels * len(kernel_sizes), num_classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) token ids with T >= max(kernel_sizes) -> logits (B, num_classes)."""
        x = self.embed(idx).transpose(1, 2)                          # (B, E, T)
        feats = [F.relu(conv(x)).amax(dim=2) for conv in self.convs]
        return self.fc(torch.cat(feats, dim=1))


def text_conv1d(vocab: int = 10000, embed_dim: int = 64, channels: int = 64,
                kernel_sizes: tuple[int, ...] = (3, 4, 5), num_classes: int = 2) -> nn.Module:
    """Embedding + Conv1d text classifier (input: (B, T) int64 token ids)."""
    return TextConv1d(vocab, embed_dim, channels, kernel_sizes, num_classes)


def conv3d_model(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Module:
    """Small 3-D CNN for (B, C, D, H, W) volumes: three Conv3d-GN-ReLU (strides 1, 2, 2),
    global pool, linear head."""
    w = width
    return nn.Sequential(
        nn.Conv3d(in_channels, w, 3, padding=1), gn(w, 8), nn.ReLU(),
        nn.Conv3d(w, 2 * w, 3, stride=2, padding=1), gn(2 * w, 8), nn.ReLU(),
        nn.Conv3d(2 * w, 4 * w, 3, stride=2, padding=1), gn(4 * w, 8), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4 * w, num_classes),
    )
