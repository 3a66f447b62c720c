"""Whole volumes through a patch-trained network: MONAI's sliding window, Gaussian-weighted.

A network trained on 96^3 patches meets a 512 x 512 x 300 CT at inference. The volume is
covered by overlapping windows of the patch size, run in small batches, and their outputs
are blended with a Gaussian weight that trusts each window's centre more than its border
(where the network saw little context). Memory is bounded by the window batch and the
output, never by a forward pass over the whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from ..errors import InvalidInputError


@torch.no_grad()
def predict_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    window: Sequence[int],
    *,
    overlap: float = 0.5,
    windows_per_batch: int = 2,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(channels, x, y, z) -> (classes, x, y, z) softmax probabilities, on the CPU.

    The windows run on ``device``; the blended output stays in host memory, so only the
    windows of one batch occupy the accelerator.
    """
    if image.ndim != 4:
        raise InvalidInputError(
            f"expected a (channels, x, y, z) volume, not shape {tuple(image.shape)}."
        )
    if not 0.0 <= overlap < 1.0:
        raise InvalidInputError(f"overlap must be in [0, 1), not {overlap}.")
    model = model.eval()
    logits = sliding_window_inference(
        image[None].float(),
        roi_size=list(window),
        sw_batch_size=windows_per_batch,
        predictor=model,
        overlap=overlap,
        mode="gaussian",
        sw_device=device,
        device="cpu",
    )
    return torch.softmax(logits[0], dim=0)


def predict_labels(
    model: nn.Module, image: torch.Tensor, window: Sequence[int], **options
) -> torch.Tensor:
    """(channels, x, y, z) -> (x, y, z) class values: the most probable class per voxel."""
    return predict_probabilities(model, image, window, **options).argmax(dim=0)
