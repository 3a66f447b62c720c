"""The networks the tasks train, built around a pretrained (or random) PCRLv2 encoder.

Classification: the encoder, global average pooling and one linear layer. Segmentation:
the encoder inside the skip-connection U-Net that ``load_encoder(segmentation_classes=...)``
builds. Both are wrapped in :class:`PadToStride`, so inputs of any size work.

``--weights`` is a zoo name, ``hf-hub:ORG/REPO[@REV]``, a local ``.safetensors`` or
official ``.pt`` file, ``scratch`` (the task's default zoo architecture, randomly
initialised) or ``scratch:SOURCE`` (the architecture of SOURCE, randomly initialised: the
baseline a pretrained file is compared against). The random parts (head, decoder) are
drawn from the seed alone, so a pretrained and a scratch network built with the same seed
differ in their encoder tensors and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.padding import pad_to_multiple
from ..weights_file import sha256_file
from .tasks import Task

SCRATCH = "scratch"
WEIGHTS_FILE_SUFFIXES = (".safetensors", ".pt", ".pth")


class Classifier(nn.Module):
    """A pooled encoder (B, C) and a linear layer to class logits."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


class PadToStride(nn.Module):
    """Runs ``network`` on inputs zero-padded, centred, up to a multiple of its stride.

    The encoder halves the resolution several times, so spatial sizes must be multiples of
    its deepest reduction (8 for the 3D network, 32 for ResNet-18): a 28^3 MedMNIST volume
    is padded to 32^3 with :func:`~pcrlv2_hub.models.padding.pad_to_multiple`. Dense
    (segmentation) outputs are cropped back to the input size, so loss and metrics only
    see real voxels.
    """

    def __init__(self, network: nn.Module, dense: bool):
        super().__init__()
        self.network = network
        self.dense = dense
        self.stride = int(network.encoder.feature_info.reduction()[-1])

    @property
    def encoder(self) -> nn.Module:
        return self.network.encoder

    def forward(self, x: Tensor) -> Tensor:
        padded, crop = pad_to_multiple(x, self.stride)
        out = self.network(padded)
        return out[crop] if self.dense else out


def weights_option(weights: str, default_model: str) -> dict[str, Any]:
    """The ``load_encoder`` arguments (``name``, ``weights``, ``pretrained``) that a
    ``--weights`` value means; bare ``scratch`` stands for ``scratch:default_model``."""
    pretrained = not (weights == SCRATCH or weights.startswith(f"{SCRATCH}:"))
    source = weights if pretrained else weights.partition(":")[2] or default_model
    if Path(source).is_file() or source.endswith(WEIGHTS_FILE_SUFFIXES):
        return {"name": None, "weights": source, "pretrained": pretrained}
    return {"name": source, "weights": None, "pretrained": pretrained}


def describe_weights(weights: str, task: Task) -> dict[str, Any]:
    """What ``--weights`` resolved to, with the file's sha256, for the results."""
    option = weights_option(weights, task.default_model)
    file = option["weights"]
    return {**option, "sha256": sha256_file(file) if file and Path(file).is_file() else None}


def build_network(
    task: Task, weights: str, num_classes: int, in_channels: int | None, seed: int
) -> PadToStride:
    """The task network, in training mode; ``.transfer_report`` tells what was loaded."""
    from .. import load_encoder

    source = {**weights_option(weights, task.default_model), "in_channels": in_channels}
    torch.manual_seed(seed)
    if task.segmentation:
        network = load_encoder(segmentation_classes=num_classes, **source)
    else:
        encoder = load_encoder(pool="avg", **source)
        torch.manual_seed(seed)  # the head must not depend on how the encoder was made
        network = Classifier(encoder, num_classes)
    return PadToStride(network, dense=task.segmentation).train()
