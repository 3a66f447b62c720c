"""Shared fixtures: a loopback Hugging Face Hub, an isolated cache, a tiny published zoo."""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hub_server import LoopbackHub
from huggingface_hub import constants

from pcrlv2_hub.manifest import MANIFEST_ENV
from pcrlv2_hub.models.unet3d import PCRLv2UNet3D
from pcrlv2_hub.publish import Release, write_release

SMALL_WIDTHS = (8, 16, 32, 64)
REPO_ID = "pcrlv2-test/unet3d_tiny"


@pytest.fixture(scope="session")
def hub_server() -> Iterator[LoopbackHub]:
    with LoopbackHub() as server:
        yield server


@pytest.fixture
def hub(hub_server: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoopbackHub:
    """The loopback Hub, empty, with a fresh HF_HOME for this test.

    huggingface_hub reads its HF_* variables once, at import: the variables are set for
    subprocesses and its constants patched for this process.
    """
    hub_server.reset()
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub_server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub_server


def small_network(seed: int = 0) -> PCRLv2UNet3D:
    """A tiny 3D PCRLv2 network with random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = PCRLv2UNet3D(widths=SMALL_WIDTHS)
    for name, tensor in model.state_dict().items():
        if name.endswith("running_mean"):
            tensor.normal_(0, 0.1)
        elif name.endswith("running_var"):
            tensor.uniform_(0.5, 1.5)
    return model.eval()


@dataclass
class Published:
    """A tiny model published on the loopback Hub and described by a temporary manifest."""

    name: str
    model: PCRLv2UNet3D
    release: Release
    entry: dict
    commit: str
    manifest: Path

    def write_manifest(self) -> None:
        document = {"schema_version": 1, "models": [self.entry]}
        self.manifest.write_text(json.dumps(document, indent=2))


@pytest.fixture
def published(hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Published:
    """``tiny3d`` (alias ``tiny``): released with write_release, served by ``hub``."""
    model = small_network()
    release = write_release(
        tmp_path / "release",
        model.state_dict(),
        "pcrlv2_unet3d",
        {"widths": list(SMALL_WIDTHS)},
        {"source": "tests"},
        name="tiny3d",
    )
    commit = hub.publish(REPO_ID, {"model.safetensors": release.weights_path.read_bytes()})
    entry = json.loads(release.snippet_path.read_text())
    entry.update(aliases=["tiny"], status="published")
    entry["weights"].update(repo_id=REPO_ID, revision=commit)
    zoo = Published("tiny3d", model, release, entry, commit, tmp_path / "manifest.json")
    zoo.write_manifest()
    monkeypatch.setenv(MANIFEST_ENV, str(zoo.manifest))
    return zoo


def flip_tensor_byte(path: Path, tensor: str, at: int = 5) -> None:
    """Flip one bit of one byte inside ``tensor``'s data, leaving the header intact."""
    data = bytearray(path.read_bytes())
    header_size = struct.unpack("<Q", data[:8])[0]
    start, _ = json.loads(data[8 : 8 + header_size])[tensor]["data_offsets"]
    data[8 + header_size + start + at] ^= 0x01
    path.write_bytes(bytes(data))


def flip_bit_in_largest_member(archive_path: Path) -> None:
    """Flip one bit in the middle of the largest member's bytes of a ``torch.save`` zip
    archive (a tensor's data), leaving every zip header intact."""
    data = bytearray(archive_path.read_bytes())
    with zipfile.ZipFile(archive_path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    name_length, extra_length = struct.unpack("<HH", data[member.header_offset + 26 :][:4])
    start = member.header_offset + 30 + name_length + extra_length
    data[start + member.file_size // 2] ^= 0x01
    archive_path.write_bytes(bytes(data))
