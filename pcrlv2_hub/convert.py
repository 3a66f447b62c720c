"""The authors' checkpoints (pickles) read safely and turned into our safetensors releases.

``simance_multi_crop_*_pretask_1.0_240.pt`` files are ``{'opt': argparse.Namespace,
'state_dict': ..., 'optimizer': ..., 'epoch': ...}``. They are read with
``torch.load(weights_only=True)`` and only ``argparse.Namespace`` allow-listed, so no code
in a pickle ever runs; anything needing another global is refused.
"""

from __future__ import annotations

import argparse
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import WeightsFormatError
from .loading import normalise_keys
from .models.unet3d import STAGE_NAMES_3D
from .pickle_archive import archive_problem
from .publish import Release, write_release
from .weights_file import sha256_file

PICKLE_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin")
_ALLOWED_GLOBALS = [argparse.Namespace]
_CLASSIFIER_KEYS = ("fc.weight", "fc.bias")  # dummies some users add; no encoder has them

# The official runs' ``--n`` (dataset) option -> (zoo name, pretraining data).
_OFFICIAL_RUNS = {
    "luna": ("unet3d_luna", "LUNA16 chest CT (official PCRLv2 pretraining)"),
    "chest": ("resnet18_chestxray", "NIH ChestX-ray14 (official PCRLv2 pretraining)"),
    "chexpter": ("resnet18_chexpert", "CheXpert (official PCRLv2 pretraining)"),
}
_RECIPE_OPTIONS = ("epochs", "b", "lr", "momentum", "weight_decay", "ratio", "seed")


@dataclass(frozen=True)
class OfficialCheckpoint:
    """The network part of an official checkpoint and what we know about it."""

    state_dict: dict[str, torch.Tensor]
    architecture: str
    arguments: dict[str, Any]
    provenance: dict[str, Any]


def is_pickle_path(path: str | os.PathLike) -> bool:
    return str(path).endswith(PICKLE_SUFFIXES)


def read_official_checkpoint(path: str | os.PathLike) -> OfficialCheckpoint:
    """Load an official PCRLv2 ``.pt`` safely and recognise its network (3D or 2D encoder)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFormatError(f"{path} does not exist or is not a file.")
    problem = archive_problem(path, legacy_allowed=True)
    if problem:
        raise WeightsFormatError(
            f"{path} is damaged: {problem}. It was not converted; download it again."
        )
    try:
        with torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = [line for line in str(error).splitlines() if "GLOBAL" in line]
        if not refused:
            raise _unreadable(path, error) from error
        raise WeightsFormatError(
            f"{path} needs more than tensors and argparse.Namespace to unpickle "
            f"({refused[0].strip()}), so it is not an official PCRLv2 checkpoint. It was not "
            "loaded: unpickling other objects could run code."
        ) from error
    except Exception as error:  # whatever a damaged pickle makes the unpickler raise
        raise _unreadable(path, error) from error
    state_dict, options, epoch = _unpack(content, path)
    architecture, arguments = _recognise(state_dict, path)
    provenance = {
        "source": "official PCRLv2 checkpoint (github.com/RL4M/PCRLv2), converted by pcrlv2_hub",
        "original_file": path.name,
        "original_sha256": sha256_file(path),
        "epoch": epoch,
        "training_arguments": options,
    }
    if options.get("n") in _OFFICIAL_RUNS:
        provenance["zoo_name"], provenance["pretraining_data"] = _OFFICIAL_RUNS[options["n"]]
    provenance["recipe"] = {key: options[key] for key in _RECIPE_OPTIONS if key in options}
    return OfficialCheckpoint(state_dict, architecture, arguments, provenance)


def convert_official(
    path: str | os.PathLike, out_dir: str | os.PathLike, *, name: str | None = None
) -> Release:
    """Write the release folder (safetensors, model card, manifest entry) of an official file.

    The entry is named after the zoo model of the same dataset (``unet3d_luna`` for the
    LUNA16 file) unless ``name`` says otherwise.
    """
    checkpoint = read_official_checkpoint(path)
    name = name or checkpoint.provenance.get("zoo_name") or Path(path).stem
    sections = {
        "Conversion": (
            f"Converted from the authors' `{Path(path).name}` (sha256 "
            f"`{checkpoint.provenance['original_sha256']}`) with `pcrlv2-hub convert`. The "
            "tensors are unchanged; the optimiser state was dropped."
        )
    }
    return write_release(
        out_dir,
        checkpoint.state_dict,
        checkpoint.architecture,
        checkpoint.arguments,
        checkpoint.provenance,
        name=name,
        card_sections=sections,
    )


def _unreadable(path: Path, error: Exception) -> WeightsFormatError:
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return WeightsFormatError(
        f"{path} is not a readable PyTorch checkpoint (truncated, or another format: {first}). "
        "Download it again."
    )


def _unpack(content: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    """(tensors, training options as plain values, epoch) from the checkpoint's dict."""
    if not isinstance(content, dict):
        raise WeightsFormatError(f"{path} holds a {type(content).__name__}, not a checkpoint dict.")
    tensors = content.get("state_dict", content)
    if not isinstance(tensors, dict) or not tensors:
        raise WeightsFormatError(f"{path} has no 'state_dict' of tensors.")
    state_dict = {
        key: value
        for key, value in normalise_keys(tensors).items()
        if isinstance(value, torch.Tensor) and key not in _CLASSIFIER_KEYS
    }
    options = next((vars(v) for v in content.values() if isinstance(v, argparse.Namespace)), {})
    plain = {key: _plain(value) for key, value in options.items()}
    return state_dict, plain, _plain(content.get("epoch"))


def _recognise(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[str, dict[str, Any]]:
    """The architecture and its arguments, read off the tensor names and shapes."""
    if f"{STAGE_NAMES_3D[0]}.ops.0.conv1.weight" in state_dict:
        if "out_tr.final_conv.weight" not in state_dict:
            raise WeightsFormatError(f"{path}: a 3D PCRLv2 encoder without its decoder.")
        if f"{STAGE_NAMES_3D[0]}.ops.0.bn1.running_mean" not in state_dict:
            raise WeightsFormatError(
                f"{path}: not batch-normalised, so the norm (gn or in) cannot be told; "
                "only the official batch-norm networks can be converted."
            )
        return "pcrlv2_unet3d", {
            "in_channels": int(state_dict[f"{STAGE_NAMES_3D[0]}.ops.0.conv1.weight"].shape[1]),
            "out_channels": int(state_dict["out_tr.final_conv.weight"].shape[0]),
            "widths": [int(state_dict[f"{n}.ops.1.conv1.weight"].shape[0]) for n in STAGE_NAMES_3D],
            "norm": "bn",
        }
    if "conv1.weight" in state_dict and "layer4.1.bn2.weight" in state_dict:
        return "pcrlv2_resnet18_encoder", {"in_channels": int(state_dict["conv1.weight"].shape[1])}
    raise WeightsFormatError(
        f"{path}: neither the 3D PCRLv2 network (down_tr64...) nor a ResNet-18 encoder "
        f"(conv1, layer1...); first keys: {list(state_dict)[:4]}."
    )


def _plain(value: Any) -> Any:
    """JSON-safe: numbers, strings, booleans and None stay; anything else becomes its str."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
