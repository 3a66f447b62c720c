"""torch.hub entry points for the PCRLv2 model zoo; each delegates to ``pcrlv2_hub``.

    >>> import torch
    >>> model = torch.hub.load("<owner>/<repo>", "unet3d_luna")
    >>> encoder = torch.hub.load("<owner>/<repo>", "load_encoder", "unet3d_luna", pool="avg")

Every entry takes the keyword options of ``pcrlv2_hub.load`` (``revision``, ``cache_dir``,
``device``, ``dtype``, ``strict``...). Weights come verified from inside the package
(``unet3d_openct_small``) or from the Hugging Face Hub as safetensors; ``pretrained=False``
builds the same network randomly initialised.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pcrlv2_hub import load, load_encoder

dependencies = ["torch", "timm", "huggingface_hub", "safetensors", "numpy", "requests", "tqdm"]

__all__ = [
    "load",
    "load_encoder",
    "resnet18_chestxray",
    "resnet18_chexpert",
    "unet3d_luna",
    "unet3d_openct_small",
]


def unet3d_luna(pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """The 3D PCRLv2 U-Net (encoder, skip-less decoder, per-level heads) pretrained on LUNA16.

    Input: (B, 1, D, H, W) CT resampled to 1 mm, clipped to [-1000, 1000] HU and scaled to
    [0, 1]; every spatial size divisible by 8 (pretraining patches: 64x64x32).
    """
    return load("unet3d_luna", pretrained, **kwargs)


def unet3d_openct_small(pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """The small 3D PCRLv2 U-Net (widths 8-16-32-64) pretrained on 179 open CT volumes; its
    weights ship inside the package, so it loads offline.

    Input: (B, 1, D, H, W) CT clipped to [-1000, 1000] HU, scaled to [0, 1] and
    z-normalised, at about 4.3 x 4.3 x 3 mm voxels; every spatial size divisible by 8
    (pretraining patches: 32x32x16).
    """
    return load("unet3d_openct_small", pretrained, **kwargs)


def resnet18_chestxray(pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """The ResNet-18 encoder PCRLv2 pretrained on NIH ChestX-ray14 (multi-scale features).

    Input: (B, 3, H, W) X-rays scaled to [0, 1] then ImageNet-normalised; sizes divisible
    by 32 (pretraining crops: 224).
    """
    return load("resnet18_chestxray", pretrained, **kwargs)


def resnet18_chexpert(pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """The ResNet-18 encoder PCRLv2 pretrained on CheXpert (multi-scale features).

    Input: (B, 3, H, W) X-rays scaled to [0, 1] then ImageNet-normalised; sizes divisible
    by 32 (pretraining crops: 224).
    """
    return load("resnet18_chexpert", pretrained, **kwargs)
