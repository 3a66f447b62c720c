"""Whole volumes through a patch-trained network: MONAI's sliding window, Gaussian-weighted.

A network trained on 96^3 patches meets a 512 x 512 x 300 CT at inference. The volume is
covered by overlapping windows of the patch size, run in small batches, and their outputs
are blended with a Gaussian weight that trusts each window's centre more than its border
(where the network saw little context). Memory is bounded by the window batch and the
output, never by a forward pass over the whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from ..errors import InvalidInputError

_SLAB = 16
"""Slices per argmax when labels are taken."""


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    image: torch.Tensor,
    window: Sequence[int],
    *,
    overlap: float = 0.5,
    windows_per_batch: int = 2,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(channels, x, y, z) -> (classes, x, y, z) blended logits, in host memory.

    The windows run on ``device``; only the windows of one batch occupy it.
    """
    if image.ndim != 4:
        raise InvalidInputError(
            f"expected a (channels, x, y, z) volume, not shape {tuple(image.shape)}."
        )
    if not 0.0 <= overlap < 1.0:
        raise InvalidInputError(f"overlap must be in [0, 1), not {overlap}.")
    logits = sliding_window_inference(
        image[None].float(),
        roi_size=list(window),
        sw_batch_size=windows_per_batch,
        predictor=model.eval(),
        overlap=overlap,
        mode="gaussian",
        sw_device=device,
        device="cpu",
    )
    return logits[0]


def predict_probabilities(
    model: nn.Module, image: torch.Tensor, window: Sequence[int], **options: Any
) -> torch.Tensor:
    """(channels, x, y, z) -> (classes, x, y, z) softmax probabilities.

    The softmax is taken in place: the output of a whole CT is gigabytes, and a second
    copy would double the peak memory.
    """
    logits = predict_logits(model, image, window, **options)
    logits -= logits.amax(dim=0, keepdim=True)
    logits.exp_()
    return logits.div_(logits.sum(dim=0, keepdim=True))


def predict_labels(
    model: nn.Module, image: torch.Tensor, window: Sequence[int], **options: Any
) -> torch.Tensor:
    """(channels, x, y, z) -> (x, y, z) class values (uint8 up to 256 classes): the
    largest logit per voxel, no softmax needed. Taken slab by slab, so that the int64
    indices ``argmax`` makes never exist for the whole volume."""
    logits = predict_logits(model, image, window, **options)
    labels = torch.empty(logits.shape[1:], dtype=torch.uint8 if len(logits) <= 256 else torch.int64)
    for start in range(0, labels.shape[-1], _SLAB):
        labels[..., start : start + _SLAB] = logits[..., start : start + _SLAB].argmax(dim=0)
    return labels
