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


def _unet2d(**arguments: Any) -> nn.Module:
    from .unet2d import PCRLv2UNet2D  # timm and torchvision load only for 2D networks

    return PCRLv2UNet2D(**arguments)


def _resnet18_encoder(**arguments: Any) -> nn.Module:
    from .unet2d import resnet18_encoder

    return resnet18_encoder(**arguments)


# The encoder-only entries name weights files that hold just an encoder: the official 2D
# checkpoint (timm/torchvision ResNet-18 names minus ``fc``), or an exported 3D encoder.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "pcrlv2_unet3d": PCRLv2UNet3D,
    "pcrlv2_unet2d": _unet2d,
    "pcrlv2_encoder3d": Encoder3D,
    "pcrlv2_resnet18_encoder": _resnet18_encoder,
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
