"""Normalisation layers by name, as the official code chose them (``norm='bn'|'gn'|'in'``)."""

from __future__ import annotations

from torch import nn

from ..errors import InvalidInputError

NORMS = ("bn", "gn", "in")


def norm3d(kind: str, channels: int) -> nn.Module:
    """A 3D normalisation layer; GroupNorm uses 8 groups (or fewer for tiny widths)."""
    if kind == "bn":
        return nn.BatchNorm3d(channels)
    if kind == "gn":
        return nn.GroupNorm(num_groups=min(8, channels), num_channels=channels)
    if kind == "in":
        return nn.InstanceNorm3d(channels, affine=True)
    raise InvalidInputError(f"norm={kind!r} is not supported; choose one of {NORMS}.")
