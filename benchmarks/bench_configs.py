"""bench.py's configurations: the models of the suite, as users bring them too (torchvision, timm), their inputs
and losses; --check's small models."""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import models as zoo  # noqa: E402  (examples/models.py)

@dataclass
class Config:
    name: str
    title: str                       # row label, e.g. "ResNet-18, 32², 256"
    build: Callable[[], nn.Module]
    input_shape: tuple               # per sample; for token models: (T,)
    num_classes: int                 # for token models: the vocabulary size of the targets
    batch: int
    tokens: bool = False             # integer token input (B, T) instead of float images
    vocab: int = 0                   # token ids are drawn from [0, vocab)
    seq_targets: bool = False        # targets (B, T) and logits (B, T, V): next-token loss
    build_oop: Callable[[], nn.Module] | None = None   # out-of-place residual variant (Opacus)
    note: str = ""
    requires: tuple = ()             # packages the builder imports (torchvision, timm): absent -> "unavailable"


class Unavailable(Exception):
    """A config or method that cannot run here (a package or the peers' sources missing): a status, not a failure."""


# The models users bring: torchvision and timm, as the peers' table ran them (/work/shared/notes/peers.md).

def group_norm_everywhere(model: nn.Module, groups: int = 32) -> nn.Module:
    """Every BatchNorm -> GroupNorm(gcd(groups, C), C) (min(32, C) groups for power-of-two widths), in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                c = child.num_features
                setattr(parent, name, nn.GroupNorm(math.gcd(groups, c), c, eps=child.eps, affine=child.affine))
    return model


def relu_not_inplace(model: nn.Module) -> nn.Module:
    """Every nn.ReLU with inplace=False (in-place activations break per-sample hooks), in place."""
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def tv_resnet(arch: str, num_classes: int, small_input: bool) -> nn.Module:
    """torchvision.models.<arch>(num_classes) with GroupNorm and out-of-place ReLU; small_input: a 3x3
    stride-1 conv1 and no max-pool (32x32 images). The residual add stays torchvision's `out += identity`."""
    import torchvision
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return relu_not_inplace(group_norm_everywhere(model))


def timm_model(name: str, num_classes: int) -> nn.Module:
    import timm
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


CONFIGS: dict[str, Config] = {c.name: c for c in [
    # The peers' table (benchmarks in /work/shared/notes/peers.md).
    Config("resnet18_32", "ResNet-18, 32², 256", lambda: zoo.resnet18_gn(10, small_input=True), (3, 32, 32), 10, 256,
           build_oop=lambda: zoo.resnet18_gn(10, small_input=True, inplace_residual=False)),
    Config("wrn16_4_32", "WRN-16-4, 32², 256", lambda: zoo.wrn16_4(10), (3, 32, 32), 10, 256),
    Config("resnet18_224", "ResNet-18, 224², 64", lambda: zoo.resnet18_gn(1000, small_input=False), (3, 224, 224), 1000, 64,
           build_oop=lambda: zoo.resnet18_gn(1000, small_input=False, inplace_residual=False)),
    Config("resnet50_224", "ResNet-50, 224², 32", lambda: zoo.resnet50_gn(1000), (3, 224, 224), 1000, 32,
           build_oop=lambda: zoo.resnet50_gn(1000, inplace_residual=False)),
    Config("vit_s16_224", "ViT-S/16, 224², 64", lambda: zoo.vit_s16(1000), (3, 224, 224), 1000, 64),
    # Extras (not in the default set).
    Config("vit_tiny_32", "ViT-Tiny/4 (6 blocks), 32², 256", lambda: zoo.vit(), (3, 32, 32), 10, 256),
    Config("small_cnn_32", "small CNN, 32², 256", lambda: zoo.small_cnn(10), (3, 32, 32), 10, 256),
    Config("convnext_32", "ConvNeXt blocks, 32², 256", lambda: zoo.convnext_block_model(10, dims=(64, 128), blocks=2),
           (3, 32, 32), 10, 256),
    Config("mobilenet_32", "MobileNet blocks, 32², 256", lambda: zoo.mobilenet_block_model(10), (3, 32, 32), 10, 256),
    Config("text_conv1d", "text Conv1d, T=256, 256", lambda: zoo.text_conv1d(vocab=20000, embed_dim=128, channels=128),
           (256,), 2, 256, tokens=True, vocab=20000),
    Config("conv3d", "3-D CNN, 16×32², 64", lambda: zoo.conv3d_model(10, in_channels=1, width=16), (1, 16, 32, 32), 10, 64),
    Config("gpt_small", "GPT small (4×256, tied), T=128, 32", lambda: zoo.gpt_small(8192, 256, 4, 4, 128), (128,), 8192, 32,
           tokens=True, vocab=8192, seq_targets=True, note="loss is the mean over B·T tokens"),
    # The models users bring (torchvision / timm; skipped as "unavailable" where the package is missing).
    Config("tv_resnet18_32", "torchvision ResNet-18 (GN), 32², 256", lambda: tv_resnet("resnet18", 10, True),
           (3, 32, 32), 10, 256, requires=("torchvision",)),
    Config("tv_resnet18_224", "torchvision ResNet-18 (GN), 224², 64", lambda: tv_resnet("resnet18", 1000, False),
           (3, 224, 224), 1000, 64, requires=("torchvision",)),
    Config("tv_resnet50_224", "torchvision ResNet-50 (GN), 224², 32", lambda: tv_resnet("resnet50", 1000, False),
           (3, 224, 224), 1000, 32, requires=("torchvision",)),
    Config("timm_vit_s16_224", "timm ViT-S/16, 224², 64", lambda: timm_model("vit_small_patch16_224", 1000),
           (3, 224, 224), 1000, 64, requires=("timm",)),
    # CPU smoke tests.
    Config("smoke", "smoke: small CNN w8, 32², 16", lambda: zoo.small_cnn(10, width=8), (3, 32, 32), 10, 16),
    Config("smoke_vit", "smoke: ViT d24×2, 16², 8", lambda: zoo.vit(16, 4, 24, 2, 3, 10), (3, 16, 16), 10, 8),
    Config("smoke_resnet", "smoke: ResNet-18 w8, 16², 8", lambda: zoo.resnet18_gn(10, width=8), (3, 16, 16), 10, 8,
           build_oop=lambda: zoo.resnet18_gn(10, width=8, inplace_residual=False)),
]}
DEFAULT_CONFIGS = "resnet18_32,wrn16_4_32,resnet18_224,resnet50_224,vit_s16_224"
# Named groups for --configs (mixable with config names): the suite is the default five + the four
# torchvision/timm models.
CONFIG_GROUPS: dict[str, list[str]] = {
    "default": DEFAULT_CONFIGS.split(","),
    "cifar": ["resnet18_32", "wrn16_4_32"],
    "imagenet": ["resnet18_224", "resnet50_224", "vit_s16_224"],
    "tv": ["tv_resnet18_32", "tv_resnet18_224", "tv_resnet50_224", "timm_vit_s16_224"],
    "tv_cifar": ["tv_resnet18_32"],
    "tv_imagenet": ["tv_resnet18_224", "tv_resnet50_224", "timm_vit_s16_224"],
}
CONFIG_GROUPS["suite"] = CONFIG_GROUPS["default"] + CONFIG_GROUPS["tv"]


def expand_configs(spec: str) -> list[str]:
    """'a,b,group,...' -> config names in order, groups expanded, duplicates dropped; 'all'; 'none' or ''."""
    names: list[str] = []
    for tok in [t for t in spec.split(",") if t]:
        if tok == "none":
            continue
        if tok == "all":
            names += [c for c in CONFIGS if not c.startswith("smoke")]
        else:
            names += CONFIG_GROUPS.get(tok, [tok])
    return list(dict.fromkeys(names))


def missing_requirement(cfg: Config) -> str | None:
    """'no torchvision' where a package the config's builder imports is absent, else None."""
    for mod in cfg.requires:
        if importlib.util.find_spec(mod) is None:
            return f"no {mod}"
    return None


CHECK_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple, int]] = {
    "small_cnn": (lambda: zoo.small_cnn(10, width=16), (3, 32, 32), 10),
    "vit_tiny": (lambda: zoo.vit(16, 4, 48, 2, 3, 10), (3, 16, 16), 10),
    "resnet_tiny": (lambda: zoo.resnet18_gn(10, width=8), (3, 16, 16), 10),
    "mobilenet": (lambda: zoo.mobilenet_block_model(10, width=8), (3, 32, 32), 10),
    "convnext": (lambda: zoo.convnext_block_model(10, dims=(16, 32), blocks=1, layer_scale=0.5), (3, 16, 16), 10),
}


def make_batch(cfg: Config, device: torch.device, batch: int | None = None, seed: int = 0):
    b = batch or cfg.batch
    g = torch.Generator().manual_seed(seed)
    if cfg.tokens:
        x = torch.randint(0, cfg.vocab, (b, *cfg.input_shape), generator=g)
    else:
        x = torch.randn(b, *cfg.input_shape, generator=g)
    y_shape = (b, *cfg.input_shape) if cfg.seq_targets else (b,)
    y = torch.randint(0, cfg.num_classes, y_shape, generator=g)
    return x.to(device), y.to(device)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.dim() == 3:  # (B, T, V) logits, (B, T) targets
        return F.cross_entropy(out.flatten(0, 1), y.flatten())
    return F.cross_entropy(out, y)


def per_sample_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) losses (private_vision's step takes them): for (B, T, V) logits the mean over a sample's T tokens."""
    if out.dim() == 3:
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(out.shape[0], -1).mean(1)
    return F.cross_entropy(out, y, reduction="none")
