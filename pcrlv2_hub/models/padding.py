"""Inputs whose spatial size the networks' strides must divide: check them, or pad them.

A network that halves its resolution k times only gives back the input size when every
spatial size is a multiple of 2**k. Rather than resize (which changes voxel spacing),
pad the input up to the next multiple and crop the output back with the returned slices.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import InvalidInputError


def pad_to_multiple(
    x: Tensor, multiple: int = 8, mode: str = "constant", value: float = 0.0
) -> tuple[Tensor, tuple[slice, ...]]:
    """Pad the spatial dims of ``x`` (B, C, *spatial) up to a multiple of ``multiple``.

    The padding is split evenly between both sides of each axis (the extra voxel, if any,
    goes after), so the content stays centred. ``mode`` is one of ``torch.nn.functional.pad``'s
    modes ("constant", "reflect", "replicate", "circular"); ``value`` fills "constant".
    Returns the padded tensor and the slices that crop a same-sized output back:
    ``y = net(padded)[slices]`` has the spatial size of ``x``.
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise InvalidInputError(f"multiple={multiple!r} must be a positive integer, e.g. 8.")
    if x.dim() < 3:
        raise InvalidInputError(
            f"expected a (B, C, *spatial) tensor, got shape {tuple(x.shape)}; "
            "add the batch and channel axes with x[None, None]."
        )
    before, after = [], []
    for size in x.shape[2:]:
        total = -size % multiple
        before.append(total // 2)
        after.append(total - total // 2)
    # F.pad lists (before, after) pairs starting from the last axis.
    pads = [p for pair in zip(reversed(before), reversed(after), strict=True) for p in pair]
    try:
        padded = F.pad(x, pads, mode=mode, value=value if mode == "constant" else None)
    except (RuntimeError, NotImplementedError, ValueError) as error:
        raise InvalidInputError(
            f"cannot pad shape {tuple(x.shape)} with mode={mode!r}: {error}; "
            "use mode='constant' or 'replicate'."
        ) from error
    crop = tuple(slice(b, b + size) for b, size in zip(before, x.shape[2:], strict=True))
    return padded, (slice(None), slice(None), *crop)


def check_input_shape(x: Tensor, spatial_dims: int, channels: int, multiple: int) -> None:
    """Fail early, with the fix, on a tensor a network with this stride cannot take."""
    if x.dim() != spatial_dims + 2 or x.shape[1] != channels:
        axes = ", ".join("DHW"[-spatial_dims:])
        raise InvalidInputError(
            f"expected a (B, {channels}, {axes}) tensor, got shape {tuple(x.shape)}; "
            "add a missing channel axis with x[:, None], or adapt the network's input "
            "channels with adapt_in_channels."
        )
    if any(size % multiple for size in x.shape[2:]):
        raise InvalidInputError(
            f"spatial size {tuple(x.shape[2:])} must be divisible by {multiple}; pad the "
            f"input with pcrlv2_hub.pad_to_multiple(x, {multiple}) and crop "
            "the output with the slices it returns, or crop the input."
        )
