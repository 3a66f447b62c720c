"""Few-label organ segmentation: fine-tune a skip U-Net on patches, predict whole regions.

The pretrained encoder goes into the U-Net with skip connections that
``load_encoder(segmentation_classes=...)`` builds (the authors' advice); decoder and head
start from the seed alone, so networks from different weights differ only in the encoder.
Training draws random patches, a share of them centred on labelled organ voxels with the
organs equally likely (MONAI's ``RandCropByLabelClasses``), and minimises the partial-label
Dice + cross-entropy; the learning rate follows a cosine to zero over a fixed number of
steps, and the final weights are evaluated (no model selection, so no validation split is
consulted). Prediction runs on whole regions of interest, several cases per forward pass,
and Dice (MONAI's ``compute_dice``) is measured on the full grid against the full label map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..finetune.losses import partial_label_loss
from ..finetune.networks import build_network
from ..finetune.tasks import TASKS
from .openkbp import NUM_CLASSES, Case, paste

CHANNELS_LAST = torch.channels_last_3d


@dataclass(frozen=True)
class SegmentationSettings:
    """One fine-tuning run's budget and optimiser."""

    steps: int = 1600
    patch_size: tuple[int, int, int] = (32, 32, 32)
    batch_size: int = 2
    lr: float = 1e-2
    encoder_lr_scale: float = 1.0
    """The encoder's learning rate relative to ``lr`` (below 1: keep pretrained features)."""
    weight_decay: float = 1e-4
    foreground_share: float = 0.8
    """Share of patches centred on an organ voxel; the rest are centred anywhere."""
    predict_batch: int = 4
    """Test cases per forward pass at prediction."""


def finetune_segmentation(
    weights: str, cases: list[Case], settings: SegmentationSettings, seed: int
) -> nn.Module:
    """A skip U-Net from ``weights`` (see ``--weights``) fine-tuned on ``cases``; eval mode."""
    model = build_network(TASKS["segment3d"], weights, NUM_CLASSES, None, seed)
    model = model.to(memory_format=CHANNELS_LAST).train()
    encoder = list(model.encoder.parameters())
    chosen = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder, "lr": settings.lr * settings.encoder_lr_scale},
            {"params": rest, "lr": settings.lr},
        ],
        weight_decay=settings.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / settings.steps))
    )
    sampler = PatchSampler(cases, settings, seed)
    for _ in range(settings.steps):
        images, labels, labelled = sampler.batch()
        loss = partial_label_loss(model(images), labels, labelled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


class PatchSampler:
    """Seeded batches of (image, label) patches, ``foreground_share`` of them on organs."""

    def __init__(self, cases: list[Case], settings: SegmentationSettings, seed: int):
        from monai.transforms import RandCropByLabelClasses
        from monai.transforms.utils import map_classes_to_indices

        self.cases = cases
        self.batch_size = settings.batch_size
        self.rng = np.random.default_rng(seed)
        self.croppers = []
        for case in cases:
            label = torch.from_numpy(case.label[None])
            indices = map_classes_to_indices(label, NUM_CLASSES)
            present = np.array([len(i) > 0 for i in indices]) & case.labelled
            organs = present[1:].sum()
            ratios = [1 - settings.foreground_share if organs else 1.0]
            ratios += [settings.foreground_share / organs if p else 0.0 for p in present[1:]]
            cropper = RandCropByLabelClasses(
                settings.patch_size,
                ratios=ratios,
                num_classes=NUM_CLASSES,
                indices=indices,
                allow_smaller=False,
                warn=False,
            )
            cropper.set_random_state(seed=int(self.rng.integers(2**31)))
            self.croppers.append(cropper)
        self.labels = [torch.from_numpy(c.label[None]) for c in cases]
        self.stacked = [
            torch.from_numpy(np.concatenate([c.image, c.label[None].astype(np.float32)]))
            for c in cases
        ]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (B, 1, *patch) channels-last, labels (B, *patch), labelled (B, K)."""
        chosen = self.rng.integers(len(self.cases), size=self.batch_size)
        patches = [
            self.croppers[i](self.stacked[i], label=self.labels[i])[0].as_tensor() for i in chosen
        ]
        stacked = torch.stack(patches)
        images = stacked[:, :1].contiguous(memory_format=CHANNELS_LAST)
        labels = stacked[:, 1].round().long()
        labelled = torch.from_numpy(np.stack([self.cases[i].labelled for i in chosen]))
        return images, labels, labelled


@torch.no_grad()
def predict(
    model: nn.Module, cases: list[Case], settings: SegmentationSettings
) -> list[np.ndarray]:
    """The label maps of ``cases``' regions of interest, (x, y, z) uint8 each.

    A region of interest fits in memory whole, so the network sees it whole: exact, with no
    window seams to blend. Cases of one size go through together, ``predict_batch`` at a
    time: on a CPU a batch of one sends most 3D convolutions down a slow non-oneDNN path,
    and whole batched regions took 0.65x the time of a 64^3 sliding window (overlap 0.25).
    """
    maps: list[np.ndarray] = []
    for start in range(0, len(cases), settings.predict_batch):
        group = cases[start : start + settings.predict_batch]
        if len({case.image.shape for case in group}) > 1:
            maps += [predict(model, [case], settings)[0] for case in group]
            continue
        images = torch.from_numpy(np.stack([case.image for case in group]))
        scores = model(images.contiguous(memory_format=CHANNELS_LAST))
        maps += list(scores.argmax(dim=1).to(torch.uint8).numpy())
    return maps


def organ_dice(prediction: np.ndarray, label: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Dice of each organ (7,) on full grids; NaN where the organ was not contoured."""
    from monai.metrics import compute_dice

    def as_batch(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.astype(np.int64))[None, None]

    dice = compute_dice(
        as_batch(prediction), as_batch(label), include_background=False, num_classes=NUM_CLASSES
    )[0].numpy()
    dice[~labelled[1:]] = np.nan
    return dice


def evaluate(
    model: nn.Module,
    cases: list[Case],
    full_labels: list[np.ndarray],
    settings: SegmentationSettings,
) -> np.ndarray:
    """Dice per test case and organ, (cases, 7)."""
    predictions = predict(model, cases, settings)
    return np.stack(
        [
            organ_dice(paste(prediction, case), label, case.labelled)
            for prediction, case, label in zip(predictions, cases, full_labels, strict=True)
        ]
    )
