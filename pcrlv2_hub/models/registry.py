"""Architecture names -> constructors, kept apart from the model classes (as timm does).

A weights file and a manifest entry name an architecture and its constructor arguments;
this is the one place that turns them into a network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, UnknownModelError
from .unet3d import Encoder3D, PCRLv2UNet3D


def _from_unet2d(name: str) -> Callable[..., nn.Module]:
    """A constructor from ``unet2d``, imported on first use: timm and torchvision load
    only for 2D networks."""

    def build(**arguments: Any) -> nn.Module:
        from . import unet2d

        return getattr(unet2d, name)(**arguments)

    return build


# The encoder-only entries name weights files that hold just an encoder: the official 2D
# checkpoint (timm/torchvision ResNet-18 names minus ``fc``), or an exported 3D encoder.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "pcrlv2_unet3d": PCRLv2UNet3D,
    "pcrlv2_unet2d": _from_unet2d("PCRLv2UNet2D"),
    "pcrlv2_encoder3d": Encoder3D,
    "pcrlv2_resnet18_encoder": _from_unet2d("resnet18_encoder"),
}


def build_model(architecture: str, **arguments: Any) -> nn.Module:
    """Instantiate ``architecture`` with ``arguments`` (clear errors for bad names/args)."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise UnknownModelError(
            f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}."
        ) from None
    try:
        return factory(**arguments)
    except TypeError as error:
        raise InvalidInputError(f"bad arguments for {architecture}: {error}.") from error


def build_on_meta(architecture: str, **arguments: Any) -> nn.Module:
    """The network with no storage, ready for ``load_state_dict(..., assign=True)``.

    Skipping random initialisation makes loading fast, and assigning the loaded tensors
    means the weights are never held twice.
    """
    with torch.device("meta"):
        return build_model(architecture, **arguments)
