"""Pretrained PCRLv2 encoders for transfer learning, with one contract for 3D and 2D.

An encoder's ``forward(x)`` returns its feature maps fine to coarse, and its
``feature_info`` (a timm ``FeatureInfo``) gives their ``channels()`` and ``reduction()``
(stride), as on timm ``features_only`` models, so downstream heads and decoders can be
built without knowing which network the weights came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import IncompatibleWeightsError, InvalidInputError, UnknownModelError
from .registry import build_model


@dataclass(frozen=True)
class _EncoderOf:
    """Where a network's encoder is, and how to build it from the network's arguments."""

    architecture: str  # the encoder's own registry name
    network_only: tuple[str, ...]  # network arguments the encoder does not take
    prefix: str  # the encoder's tensors are the network's keys starting with this
    strip: bool  # whether the encoder's own key names drop the prefix


_ENCODERS = {
    "pcrlv2_unet3d": _EncoderOf("pcrlv2_encoder3d", ("out_channels",), "down_tr", strip=False),
    "pcrlv2_encoder3d": _EncoderOf("pcrlv2_encoder3d", (), "", strip=False),
    "pcrlv2_unet2d": _EncoderOf(
        "pcrlv2_resnet18_encoder", ("out_channels", "decoder_widths"), "encoder.", strip=True
    ),
    "pcrlv2_resnet18_encoder": _EncoderOf("pcrlv2_resnet18_encoder", (), "", strip=False),
}


def _encoder_of(architecture: str) -> _EncoderOf:
    try:
        return _ENCODERS[architecture]
    except KeyError:
        raise UnknownModelError(
            f"architecture {architecture!r} has no known encoder; known: {sorted(_ENCODERS)}."
        ) from None


def build_encoder(architecture: str, arguments: dict[str, Any]) -> nn.Module:
    """The encoder of ``architecture``, built from the whole network's ``arguments``.

    Arguments that only concern the decoder (``out_channels``, ``decoder_widths``) are
    dropped, so the arguments stored with a full network's weights can be passed as-is.
    """
    spec = _encoder_of(architecture)
    kept = {k: v for k, v in arguments.items() if k not in spec.network_only}
    return build_model(spec.architecture, **kept)


def encoder_state_dict(architecture: str, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The encoder's tensors from a state dict of the whole ``architecture``, renamed to
    the encoder's own keys (ready for ``build_encoder(...).load_state_dict``)."""
    spec = _encoder_of(architecture)
    start = len(spec.prefix) if spec.strip else 0
    selected = {k[start:]: v for k, v in state_dict.items() if k.startswith(spec.prefix)}
    if not selected:
        raise IncompatibleWeightsError(
            f"no encoder tensors (keys starting with {spec.prefix!r}) in these weights; are "
            f"they really a {architecture} state dict? First keys: {list(state_dict)[:3]}."
        )
    return selected


def stem_convolution(encoder: nn.Module) -> nn.Conv2d | nn.Conv3d:
    """The first convolution, the only layer that sees the input channels."""
    for module in encoder.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            return module
    raise InvalidInputError(f"{type(encoder).__name__} has no convolution to adapt.")


def adapt_in_channels(encoder: nn.Module, in_channels: int) -> nn.Module:
    """Make ``encoder`` take ``in_channels`` input channels, in place, keeping its features.

    The stem kernel is summed over its input channels and spread evenly over the new ones
    (divided by ``in_channels``). An input whose ``in_channels`` channels are copies of one
    image then gives exactly the features (up to float rounding) that the original encoder
    gives for that image copied to its own channels. So a 1-channel CT encoder takes
    4-channel MRI (the kernel repeated and divided by 4), and the 3-channel ImageNet-style
    2D stem takes grayscale (the RGB kernels summed) or any N channels.
    Asking for the channel count the stem already has changes nothing.
    Returns ``encoder`` for chaining.
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise InvalidInputError(f"in_channels={in_channels!r} must be a positive integer.")
    stem = stem_convolution(encoder)
    if stem.in_channels == in_channels:
        return encoder
    if stem.groups != 1:
        raise InvalidInputError("cannot adapt a grouped stem convolution.")
    old = stem.weight
    with torch.no_grad():
        summed = old.sum(dim=1, keepdim=True) / in_channels
        weight = summed.repeat(1, in_channels, *([1] * (old.dim() - 2)))
    stem.weight = nn.Parameter(weight, requires_grad=old.requires_grad)
    stem.in_channels = in_channels
    return encoder


class PooledEncoder(nn.Module):
    """An encoder followed by global pooling of its deepest map: (B, C) vectors.

    ``feature_info`` is the encoder's; ``num_features`` is C, the input size of a
    classification head. The encoder's tensors are under ``encoder.`` in this module's
    state dict, so load pretrained weights into the encoder before wrapping it.
    """

    def __init__(self, encoder: nn.Module, pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise InvalidInputError(f"pool={pool!r} is not supported; choose 'avg' or 'max'.")
        self.encoder = encoder
        self.pool = pool
        self.feature_info = encoder.feature_info
        self.num_features = encoder.feature_info.channels()[-1]

    def forward(self, x: Tensor) -> Tensor:
        deepest = self.encoder(x)[-1].flatten(2)
        return deepest.mean(dim=2) if self.pool == "avg" else deepest.amax(dim=2)
