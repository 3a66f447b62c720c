"""The on-disk weights format: safetensors whose metadata rebuilds its own network.

Every file this package writes (converted official checkpoints, exported pretraining
runs) carries, in the safetensors header, the architecture name, the constructor
arguments and the provenance as JSON strings. A file can therefore be loaded with
nothing but its path, and nothing in it is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_output
from .errors import WeightsFormatError

FORMAT_VERSION = "1"
_KEY_ARCH = "pcrlv2_hub.architecture"
_KEY_ARGS = "pcrlv2_hub.arguments"
_KEY_PROV = "pcrlv2_hub.provenance"
_KEY_VERSION = "pcrlv2_hub.format_version"


@dataclass(frozen=True)
class WeightsMetadata:
    """What a weights file says about itself."""

    architecture: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, streamed so that large files never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    architecture: str,
    arguments: dict[str, Any],
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``state_dict`` atomically (temp file, then rename) with self-describing metadata."""
    path = Path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in state_dict.items()}
    metadata = {
        _KEY_VERSION: FORMAT_VERSION,
        _KEY_ARCH: architecture,
        _KEY_ARGS: json.dumps(arguments, sort_keys=True),
        _KEY_PROV: json.dumps(provenance or {}, sort_keys=True),
    }
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | os.PathLike) -> WeightsMetadata:
    """Only the header: cheap, and enough to know which network to build."""
    with _open(path) as handle:
        return _parse_metadata(handle.metadata() or {}, path)


def read_weights(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """All tensors (read straight to ``device``) and the metadata of a safetensors file."""
    with _open(path, device=str(device)) as handle:
        metadata = _parse_metadata(handle.metadata() or {}, path)
        try:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, RuntimeError) as error:
            raise _corrupt(path, error) from error
    return tensors, metadata


def _open(path: str | os.PathLike, device: str = "cpu"):
    path = Path(path)
    if not path.is_file():
        raise WeightsFormatError(f"{path} does not exist or is not a file.")
    try:
        return safe_open(str(path), framework="pt", device=device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise _corrupt(path, error) from error


def _corrupt(path: str | os.PathLike, error: Exception) -> WeightsFormatError:
    hint = ""
    if str(path).endswith((".pt", ".pth", ".pth.tar", ".ckpt")):
        hint = " It looks like a pickle: convert it first with `pcrlv2-hub convert FILE -o DIR`."
    return WeightsFormatError(
        f"{path} is not a readable safetensors file (truncated, corrupt or another format: "
        f"{error}).{hint} Download it again or re-export it."
    )


def _parse_metadata(raw: dict[str, str], path: str | os.PathLike) -> WeightsMetadata:
    try:
        arguments = json.loads(raw.get(_KEY_ARGS, "{}"))
        provenance = json.loads(raw.get(_KEY_PROV, "{}"))
    except json.JSONDecodeError as error:
        raise WeightsFormatError(
            f"{path}: its pcrlv2_hub metadata is not valid JSON ({error})."
        ) from error
    return WeightsMetadata(raw.get(_KEY_ARCH), arguments, provenance)
