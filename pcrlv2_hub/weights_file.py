"""The on-disk weights format: safetensors whose metadata rebuilds its own network.

Every file this package writes (converted official checkpoints, exported pretraining
runs, releases, bundled zoo files) carries, in the safetensors header, the architecture
name, the constructor arguments, the provenance and a digest of its tensors, as one JSON
string under the key ``pcrlv2_hub``. A file can therefore be loaded with nothing but its
path, nothing in it is ever unpickled, and every read checks the tensors against the
digest before returning them. One key with sorted JSON also makes the bytes reproducible:
safetensors writes several metadata keys in an arbitrary order.

Format 3 records a BLAKE3 digest. Format 2 files (a ``sha256:`` digest) are still
checked, and format 1 files (four ``pcrlv2_hub.*`` keys, no digest) still load, with a
notice that their tensors could not be verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_output
from .errors import ChecksumMismatchError, UnverifiedWeightsWarning, WeightsFormatError
from .tensor_digest import scheme_of, start_digest, tensor_digest

FORMAT_VERSION = "3"
_KEY = "pcrlv2_hub"
_V1_KEY_ARCH = "pcrlv2_hub.architecture"
_V1_KEY_ARGS = "pcrlv2_hub.arguments"
_V1_KEY_PROV = "pcrlv2_hub.provenance"


@dataclass(frozen=True)
class WeightsMetadata:
    """What a weights file says about itself."""

    architecture: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    tensor_digest: str | None = None
    """``<scheme>:<hex>`` of the tensors (:func:`~pcrlv2_hub.tensor_digest.tensor_digest`)."""


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
    """Write ``state_dict`` atomically (temp file, then rename) with self-describing
    metadata; the same tensors and metadata always give the same bytes."""
    path = Path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in state_dict.items()}
    described = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "arguments": arguments,
        "provenance": provenance or {},
        "tensor_digest": tensor_digest(tensors),
    }
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={_KEY: json.dumps(described, sort_keys=True)})
    return path


def read_metadata(path: str | os.PathLike) -> WeightsMetadata:
    """Only the header: cheap, and enough to know which network to build."""
    with _open(path) as handle:
        return _parse_metadata(handle.metadata() or {}, path)


@dataclass
class OpenedWeights:
    """Tensors read from a file, their digest still being checked by worker threads.

    Only :meth:`verify` makes them trustworthy: build the network meanwhile, then verify
    before handing anything out, so that the check costs little more than nothing.
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: WeightsMetadata
    expected: str | None
    """The digest the tensors must have; None: nothing to check them against."""
    pending: Future[str] | None

    def verify(self) -> None:
        """Raise :class:`ChecksumMismatchError` if the tensors differ from ``expected``."""
        if self.pending is None:
            return
        actual = self.pending.result()
        if actual != self.expected:
            raise ChecksumMismatchError(
                f"{self.path}: its tensors do not match the digest recorded in the file "
                f"({actual} instead of {self.expected}); the file was changed or damaged "
                "after it was written. Download or export it again."
            )


def open_weights(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    expected_digest: str | None = None,
    sha256_checked: bool = False,
) -> OpenedWeights:
    """All tensors (read straight to ``device``) and the metadata of a safetensors file,
    with the check of the tensors against the file's digest started in the background.

    ``expected_digest``: the digest a trusted source (a zoo manifest) gives; the file must
    record the same one. ``sha256_checked``: the whole file was just checked against a
    trusted sha256, which covers every byte the digest covers, so nothing is hashed again.
    """
    path = Path(path)
    with _open(path, device=str(device)) as handle:
        metadata = _parse_metadata(handle.metadata() or {}, path)
        try:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, RuntimeError) as error:
            raise _corrupt(path, error) from error
    if sha256_checked:
        return OpenedWeights(path, tensors, metadata, None, None)
    recorded = metadata.tensor_digest
    if expected_digest is not None and recorded != expected_digest:
        raise ChecksumMismatchError(
            f"{path} records the tensor digest {recorded}, but its source expects "
            f"{expected_digest}: this is not the file it describes, or it was damaged. "
            "Download it again."
        )
    scheme = scheme_of(recorded) if recorded else None
    if scheme is None:
        why = (
            "no tensor digest (an older export or another tool's file)"
            if recorded is None
            else f"a digest of a kind this version cannot check ({recorded.split(':')[0]})"
        )
        warnings.warn(
            f"{path} records {why}, so its tensors could not be verified; re-export or "
            "convert it to add one, or upgrade pcrlv2_hub.",
            UnverifiedWeightsWarning,
            stacklevel=2,
        )
        return OpenedWeights(path, tensors, metadata, None, None)
    return OpenedWeights(path, tensors, metadata, recorded, start_digest(tensors, scheme))


def read_weights(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    expected_digest: str | None = None,
    sha256_checked: bool = False,
) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """:func:`open_weights`, waiting for the check (:class:`ChecksumMismatchError`)."""
    opened = open_weights(
        path, device, expected_digest=expected_digest, sha256_checked=sha256_checked
    )
    opened.verify()
    return opened.tensors, opened.metadata


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
        if _KEY in raw:
            described = json.loads(raw[_KEY])
        else:  # format 1
            described = {
                "architecture": raw.get(_V1_KEY_ARCH),
                "arguments": json.loads(raw.get(_V1_KEY_ARGS, "{}")),
                "provenance": json.loads(raw.get(_V1_KEY_PROV, "{}")),
            }
    except json.JSONDecodeError as error:
        raise WeightsFormatError(
            f"{path}: its pcrlv2_hub metadata is not valid JSON ({error})."
        ) from error
    if isinstance(described, dict):
        metadata = WeightsMetadata(
            described.get("architecture"),
            described.get("arguments", {}),
            described.get("provenance", {}),
            described.get("tensor_digest"),
        )
        names = (metadata.architecture, metadata.tensor_digest)
        if (
            isinstance(metadata.arguments, dict)
            and isinstance(metadata.provenance, dict)
            and all(name is None or isinstance(name, str) for name in names)
        ):
            return metadata
    raise WeightsFormatError(f"{path}: its pcrlv2_hub metadata is malformed.")
