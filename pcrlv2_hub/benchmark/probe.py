"""Frozen-encoder probe for segmentation: a linear classifier on the encoder's hypercolumns.

What does the pretrained encoder know about the organs *without* being fine-tuned? Each
voxel is described by its hypercolumn, the encoder's feature vectors of all stages at that
voxel (each stage's map upsampled by nearest neighbour, so a voxel takes the vector of the
coarse cell it lies in), and a multinomial logistic regression maps hypercolumns to
classes. It is trained on voxels sampled from the labelled patients (half of them on
organs) with the partial-label loss, features standardised with the training voxels'
statistics. The encoder runs once per patient in eval mode, so probing many label counts
and seeds costs little more than one; prediction applies the linear map stage by stage at
each stage's own resolution and upsamples the class scores, which is exactly the dense
version of the per-voxel classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..finetune.losses import merge_unlabelled
from .openkbp import NUM_CLASSES, Case

BATCH = 4


@dataclass(frozen=True)
class ProbeSettings:
    voxels_per_case: int = 2000
    steps: int = 300
    lr: float = 0.05
    weight_decay: float = 1e-4


class Hypercolumns:
    """The frozen encoder's view of the cases: dense features, and training voxels kept.

    Each case's training voxels are drawn once (seeded by the case's name, half on organs)
    and their hypercolumns kept, so every probe that uses the case reuses one encoder pass.
    """

    def __init__(self, encoder: nn.Module, voxels_per_case: int):
        self.encoder = encoder.eval()
        self.strides = [int(s) for s in encoder.feature_info.reduction()]
        self.voxels_per_case = voxels_per_case
        self._training: dict[str, tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def features(self, cases: list[Case]) -> list[list[Tensor]]:
        """Feature maps (C_i, *roi / stride_i) of each case, fine to coarse.

        Cases of one ROI size go through the encoder together, up to ``BATCH`` at a time:
        on a CPU a batch of one takes a 3D convolution path several times slower.
        """
        out: list[list[Tensor]] = []
        for start in range(0, len(cases), BATCH):
            group = cases[start : start + BATCH]
            if len({c.image.shape for c in group}) > 1:
                out += [self.features([case])[0] for case in group]
                continue
            images = torch.from_numpy(np.stack([c.image for c in group]))
            maps = self.encoder(images.contiguous(memory_format=torch.channels_last_3d))
            out += [[m[i].contiguous() for m in maps] for i in range(len(group))]
        return out

    def training_voxels(self, cases: list[Case]) -> list[tuple[Tensor, Tensor]]:
        """Hypercolumns (N, sum C_i) and labels (N,) of each case's training voxels."""
        missing = [c for c in cases if c.name not in self._training]
        for start in range(0, len(missing), BATCH):
            group = missing[start : start + BATCH]
            for case, features in zip(group, self.features(group), strict=True):
                seed = int.from_bytes(case.name.encode(), "little") % 2**32
                voxels = sample_voxels(case, self.voxels_per_case, np.random.default_rng(seed))
                columns = []
                for feature, stride in zip(features, self.strides, strict=True):
                    x, y, z = torch.from_numpy(voxels // stride).T
                    columns.append(feature[:, x, y, z].T)
                label = torch.from_numpy(case.label[tuple(voxels.T)].astype(np.int64))
                self._training[case.name] = (torch.cat(columns, dim=1), label)
        return [self._training[c.name] for c in cases]


def sample_voxels(case: Case, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` voxel coordinates of the ROI: half on labelled organs, half anywhere."""
    organ = np.argwhere(case.label > 0)
    on_organs = min(count // 2, len(organ))
    picked = organ[rng.choice(len(organ), on_organs, replace=False)] if on_organs else organ[:0]
    anywhere = np.stack(
        [rng.integers(size, size=count - on_organs) for size in case.label.shape], axis=1
    )
    return np.concatenate([picked, anywhere])


class LinearProbe(nn.Module):
    """Standardisation and one linear layer over hypercolumns, usable on dense features."""

    def __init__(self, mean: Tensor, std: Tensor, channels: list[int]):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.channels = channels
        self.linear = nn.Linear(len(mean), NUM_CLASSES)

    def forward(self, columns: Tensor) -> Tensor:
        return self.linear((columns - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, features: list[Tensor], strides: list[int]) -> np.ndarray:
        """The label map of a whole ROI from its feature maps (C_i, *roi / stride_i)."""
        weight = self.linear.weight / self.std
        bias = self.linear.bias - weight @ self.mean
        pieces = torch.split(weight, self.channels, dim=1)
        scores = None
        for feature, piece, stride in zip(features, pieces, strides, strict=True):
            coarse = torch.einsum("kc,c...->k...", piece, feature)
            fine = F.interpolate(coarse[None], scale_factor=stride, mode="nearest")[0]
            scores = fine if scores is None else scores + fine
        scores = scores + bias.view(-1, 1, 1, 1)
        return scores.argmax(dim=0).to(torch.uint8).numpy()


def fit_probe(
    hypercolumns: Hypercolumns, cases: list[Case], settings: ProbeSettings, seed: int
) -> LinearProbe:
    """A linear probe trained on the training voxels of ``cases`` (full batch, Adam)."""
    pairs = hypercolumns.training_voxels(cases)
    x = torch.cat([columns for columns, _ in pairs])
    y = torch.cat([label for _, label in pairs])
    known = torch.cat(
        [
            torch.from_numpy(case.labelled).expand(len(label), -1)
            for case, (_, label) in zip(cases, pairs, strict=True)
        ]
    )
    channels = [int(w) for w in hypercolumns.encoder.feature_info.channels()]
    torch.manual_seed(seed)
    probe = LinearProbe(x.mean(0), x.std(0).clamp_min(1e-6), channels)
    standardised = (x - probe.mean) / probe.std  # once, not at every step
    optimizer = torch.optim.Adam(
        probe.linear.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    for _ in range(settings.steps):
        loss = F.cross_entropy(merge_unlabelled(probe.linear(standardised), known), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return probe.eval()
