"""The fine-tuning tasks: their data, the network ``--weights scratch`` means, loss and metrics.

A task is data, not a class hierarchy: the three differ only in their spatial dimensions,
whether targets are label maps, and the zoo model that gives the default architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor

from ..pretrain.corruptions import z_normalise
from .losses import dice_ce_loss
from .metrics import accuracy, auc, dice_per_class


@dataclass(frozen=True)
class Task:
    """One downstream task (``--task``)."""

    name: str
    spatial_dims: int
    segmentation: bool
    default_model: str
    """The zoo model whose architecture ``--weights scratch`` initialises randomly."""

    def prepare_images(self, images: np.ndarray) -> np.ndarray:
        """Bring [0, 1] images to the distribution the pretrained encoder saw as input.

        3D PCRLv2 inputs were z-normalised per sample (zero mean, unit variance), after
        the corruptions; the 2D encoder saw ImageNet-normalised RGB, so grayscale X-rays
        are copied to three channels and normalised with ImageNet's mean and deviation.
        """
        if self.spatial_dims == 3:
            return z_normalise(torch.from_numpy(images)).numpy()
        if images.shape[1] == 1:
            images = np.repeat(images, 3, axis=1)
        if images.shape[1] == 3:
            shape = (1, 3, 1, 1)
            mean = np.reshape(IMAGENET_DEFAULT_MEAN, shape).astype(np.float32)
            std = np.reshape(IMAGENET_DEFAULT_STD, shape).astype(np.float32)
            images = (images - mean) / std
        return images

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Dice + cross-entropy for label maps, cross-entropy for class indices."""
        if self.segmentation:
            return dice_ce_loss(logits, targets)
        return F.cross_entropy(logits, targets.long())

    def outputs(self, logits: Tensor) -> np.ndarray:
        """What metrics need from logits: label maps, or class probabilities (N, K)."""
        if self.segmentation:
            return logits.argmax(dim=1).to(torch.int16).cpu().numpy()
        return logits.float().softmax(dim=1).cpu().numpy()

    def metrics(self, outputs: np.ndarray, targets: np.ndarray, num_classes: int) -> dict:
        """Dice per class and their foreground mean; or AUC and accuracy."""
        if self.segmentation:
            dice = dice_per_class(outputs, targets, num_classes)
            foreground = [d for d in dice[1:] if not np.isnan(d)]
            mean = float(np.mean(foreground)) if foreground else float("nan")
            return {"mean_dice": mean, "dice_per_class": dice}
        return {"auc": auc(targets, outputs), "accuracy": accuracy(targets, outputs)}


TASKS = {
    task.name: task
    for task in (
        Task("classify3d", spatial_dims=3, segmentation=False, default_model="unet3d_luna"),
        Task("segment3d", spatial_dims=3, segmentation=True, default_model="unet3d_luna"),
        Task("classify2d", spatial_dims=2, segmentation=False, default_model="resnet18_chestxray"),
    )
}
