"""Named results of a PCRLv2 forward pass (no positional tuples to mix up)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class PyramidLevel:
    """What one decoder level produces.

    ``projection`` is z (B, C), ``prediction`` is p (B, C); ``restoration`` is the
    deep-supervision image resized to the input size, or None where it was not asked for.
    """

    projection: Tensor
    prediction: Tensor
    restoration: Tensor | None


@dataclass(frozen=True)
class PCRLv2Output:
    """The final restoration (None in local mode) and the decoder pyramid, coarse to fine."""

    restoration: Tensor | None
    levels: tuple[PyramidLevel, ...]
