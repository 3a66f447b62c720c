"""PCRLv2 pretrained models for medical imaging: one call to a verified network.

    >>> import pcrlv2_hub
    >>> pcrlv2_hub.list_models()
    >>> model = pcrlv2_hub.load("unet3d_luna")            # or weights="model.safetensors"
    >>> encoder = pcrlv2_hub.load_encoder("unet3d_luna", in_channels=4)

The functions and model classes are imported on first use, so ``import pcrlv2_hub`` (and
the command line's ``--help``) does not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import (
    CheckpointError,
    CheckpointWarning,
    ChecksumMismatchError,
    DataError,
    DataWarning,
    DownloadError,
    IncompatibleWeightsError,
    InvalidInputError,
    ManifestError,
    OfflineError,
    PCRLv2HubError,
    TrainingDivergedError,
    UnknownModelError,
    UnverifiedWeightsWarning,
    UploadError,
    VerificationError,
    WeightsFormatError,
    WeightsNotPublishedError,
)

_LAZY = {
    "load": ".api",
    "load_encoder": ".api",
    "list_models": ".api",
    "model_info": ".api",
    "pad_to_multiple": ".models.padding",
    "PCRLv2UNet3D": ".models.unet3d",
    "PCRLv2UNet2D": ".models.unet2d",
}

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "ChecksumMismatchError",
    "DataError",
    "DataWarning",
    "DownloadError",
    "IncompatibleWeightsError",
    "InvalidInputError",
    "ManifestError",
    "OfflineError",
    "PCRLv2HubError",
    "TrainingDivergedError",
    "UnknownModelError",
    "UnverifiedWeightsWarning",
    "UploadError",
    "VerificationError",
    "WeightsFormatError",
    "WeightsNotPublishedError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pcrlv2_hub' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
