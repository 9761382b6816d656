"""fix(model): replace the layers that mix samples (BatchNorm) with per-sample equivalents, in place."""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)

GROUP_CHOICES = (32, 16, 8, 4, 2, 1)


def groups_for(channels: int) -> int:
    """The largest of 32, 16, 8, 4, 2, 1 that divides channels."""
    return next(g for g in GROUP_CHOICES if channels % g == 0)


def group_norm_for(bn: _BatchNorm) -> nn.GroupNorm:
    """GroupNorm(groups_for(C), C) with BatchNorm's eps, affine flag, weight and bias, device and dtype."""
    if isinstance(bn, nn.modules.lazy.LazyModuleMixin) and bn.has_uninitialized_params():
        raise ValueError(f"{type(bn).__name__} has no channel count yet: run one forward pass before fix(model)")
    c = bn.num_features
    like = bn.weight if bn.affine else bn.running_mean
    kwargs = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    gn = nn.GroupNorm(groups_for(c), c, eps=bn.eps, affine=bn.affine, **kwargs)
    if bn.affine:
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
        gn.weight.requires_grad_(bn.weight.requires_grad)
        gn.bias.requires_grad_(bn.bias.requires_grad)
    gn.train(bn.training)
    return gn


def _describe(path: str, bn: _BatchNorm, gn: nn.GroupNorm) -> str:
    """'layer1.0.bn1: BatchNorm2d(64) -> GroupNorm(32, 64)'."""
    affine = "" if bn.affine else ", affine=False"
    return (f"{path}: {type(bn).__name__}({bn.num_features}{affine}) -> "
            f"GroupNorm({gn.num_groups}, {gn.num_channels}{affine})")


def fix(model: nn.Module) -> list[str]:
    """Replace every BatchNorm1d/2d/3d and SyncBatchNorm in model with GroupNorm, in place; one line per change."""
    if isinstance(model, _BatchNorm):
        raise ValueError(f"fix(model) replaces submodules in place; the model itself is a {type(model).__name__}: "
                         "wrap it in a module or build a GroupNorm instead")
    replaced: dict[int, nn.GroupNorm] = {}  # a BatchNorm shared by several paths becomes one shared GroupNorm
    changes = []
    for path, parent in list(model.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):  # not named_children(): it skips repeats
            if not isinstance(child, _BatchNorm):
                continue
            if id(child) not in replaced:
                replaced[id(child)] = group_norm_for(child)
            gn = replaced[id(child)]
            setattr(parent, name, gn)
            changes.append(_describe(f"{path}.{name}" if path else name, child, gn))
    for line in changes:
        logger.info("fix: %s", line)
    return changes
