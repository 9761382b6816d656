"""fix(model): replace the layers that mix samples (BatchNorm) with per-sample equivalents, in place."""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ConfigError

logger = logging.getLogger(__name__)

GROUP_CHOICES = (32, 16, 8, 4, 2, 1)


def groups_for(channels: int) -> int:
    """The largest of 32, 16, 8, 4, 2, 1 that divides channels."""
    return next(g for g in GROUP_CHOICES if channels % g == 0)


# BatchNorm forwards that only normalise; a subclass with a forward of its own may do more.
PLAIN_FORWARDS = (_BatchNorm.forward, nn.SyncBatchNorm.forward)


class NormAct(nn.Module):
    """A norm, then dropout, then an activation: what a BatchNorm subclass with `drop` and `act` submodules
    (timm's BatchNormAct2d, SyncBatchNormAct) computes after its normalisation, around a GroupNorm."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(self.norm(x)))


def replacement_for(path: str, bn: _BatchNorm) -> nn.Module:
    """The per-sample module for a BatchNorm: a GroupNorm, with the subclass's dropout and activation after it
    for a norm-and-activation layer; refused for any other subclass with a forward of its own (what it adds
    to the normalisation is unknown, and dropping it would change the model silently)."""
    if type(bn).forward in PLAIN_FORWARDS:
        return group_norm_for(bn)
    if isinstance(getattr(bn, "drop", None), nn.Module) and isinstance(getattr(bn, "act", None), nn.Module):
        return NormAct(group_norm_for(bn), bn.drop, bn.act)
    raise ConfigError(f"fix(model): '{path}' is a {type(bn).__name__}, a BatchNorm with a forward of its own, "
                      "which may do more than normalise: replace it by hand (a GroupNorm followed by what its "
                      "forward adds)")


def group_norm_for(bn: _BatchNorm) -> nn.GroupNorm:
    """GroupNorm(groups_for(C), C) with BatchNorm's eps, affine flag, weight and bias, device and dtype."""
    if isinstance(bn, nn.modules.lazy.LazyModuleMixin) and bn.has_uninitialized_params():
        raise ConfigError(f"{type(bn).__name__} has no channel count yet: run one forward pass before fix(model)")
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


def _describe(path: str, bn: _BatchNorm, new: nn.Module) -> str:
    """'layer1.0.bn1: BatchNorm2d(64) -> GroupNorm(32, 64)' (', then its drop and act' after a NormAct's)."""
    affine = "" if bn.affine else ", affine=False"
    gn = new.norm if isinstance(new, NormAct) else new
    return (f"{path}: {type(bn).__name__}({bn.num_features}{affine}) -> "
            f"GroupNorm({gn.num_groups}, {gn.num_channels}{affine})"
            + (", then its drop and act" if isinstance(new, NormAct) else ""))


def fix(model: nn.Module) -> list[str]:
    """Replace every BatchNorm1d/2d/3d and SyncBatchNorm in model with GroupNorm, in place; one line per change.
    A norm-and-activation subclass (timm's BatchNormAct2d) keeps its dropout and activation after the GroupNorm;
    any other BatchNorm subclass with a forward of its own is refused."""
    if isinstance(model, _BatchNorm):
        raise ConfigError(f"fix(model) replaces submodules in place; the model itself is a {type(model).__name__}: "
                          "wrap it in a module or build a GroupNorm instead")
    replaced: dict[int, nn.Module] = {}  # a BatchNorm shared by several paths becomes one shared GroupNorm
    changes = []
    for path, parent in list(model.named_modules(remove_duplicate=False)):
        for name, child in list(parent._modules.items()):  # not named_children(): it skips repeats
            if not isinstance(child, _BatchNorm):
                continue
            where = f"{path}.{name}" if path else name
            if id(child) not in replaced:
                replaced[id(child)] = replacement_for(where, child)
            setattr(parent, name, replaced[id(child)])
            changes.append(_describe(where, child, replaced[id(child)]))
    for line in changes:
        logger.info("fix: %s", line)
    return changes
