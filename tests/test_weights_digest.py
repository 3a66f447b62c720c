"""Weights files that verify themselves: a digest of the tensors, recorded and checked."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import SMALL_WIDTHS, small_network
from safetensors.torch import save_file

import pcrlv2_hub
from pcrlv2_hub import ChecksumMismatchError, UnverifiedWeightsWarning
from pcrlv2_hub.cli import main
from pcrlv2_hub.finetune.networks import build_network
from pcrlv2_hub.finetune.tasks import TASKS
from pcrlv2_hub.tensor_digest import tensor_digest
from pcrlv2_hub.verify import verify
from pcrlv2_hub.weights_file import read_metadata, read_weights, save_weights

ARGUMENTS = {"widths": list(SMALL_WIDTHS)}


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return save_weights(
        tmp_path / "model.safetensors", small_network(0).state_dict(), "pcrlv2_unet3d", ARGUMENTS
    )


def flip_tensor_byte(path: Path, tensor: str, at: int = 5) -> None:
    """Flip one bit of one byte inside ``tensor``'s data, leaving the header intact."""
    data = bytearray(path.read_bytes())
    header_size = struct.unpack("<Q", data[:8])[0]
    start, _ = json.loads(data[8 : 8 + header_size])[tensor]["data_offsets"]
    data[8 + header_size + start + at] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_same_weights_give_the_same_bytes(exported: Path, tmp_path: Path):
    again = save_weights(
        tmp_path / "again.safetensors", small_network(0).state_dict(), "pcrlv2_unet3d", ARGUMENTS
    )
    assert again.read_bytes() == exported.read_bytes()
    state = small_network(0).state_dict()
    assert read_metadata(exported).tensor_digest == tensor_digest(state)


def test_a_flipped_data_byte_is_refused_everywhere(exported: Path, capsys):
    flip_tensor_byte(exported, "down_tr64.ops.0.conv1.weight")
    with pytest.raises(ChecksumMismatchError, match="do not match the digest"):
        pcrlv2_hub.load(weights=exported)
    with pytest.raises(ChecksumMismatchError, match=str(exported)):
        pcrlv2_hub.load_encoder(weights=exported)
    with pytest.raises(ChecksumMismatchError):
        verify(exported)
    with pytest.raises(ChecksumMismatchError):  # what `finetune --weights FILE` builds
        build_network(TASKS["classify3d"], str(exported), 2, None, seed=0)
    assert main(["verify", str(exported)]) != 0
    assert "do not match the digest" in capsys.readouterr().err


def test_the_digest_covers_names_dtypes_and_shapes():
    tensors = {"a": torch.arange(6, dtype=torch.float32), "b": torch.zeros(2)}
    reference = tensor_digest(tensors)
    assert tensor_digest({"b": tensors["b"], "a": tensors["a"]}) == reference  # order-free
    assert tensor_digest({"a2": tensors["a"], "b": tensors["b"]}) != reference
    assert tensor_digest({**tensors, "a": tensors["a"].view(2, 3)}) != reference
    assert tensor_digest({**tensors, "a": tensors["a"].view(torch.int32)}) != reference
    assert tensor_digest({**tensors, "c": torch.zeros(0)}) != reference


def test_files_without_a_digest_load_with_a_notice(tmp_path: Path):
    """A format-1 export (before digests) still loads, saying it could not be verified."""
    state = small_network(0).state_dict()
    old = tmp_path / "format1.safetensors"
    metadata = {
        "pcrlv2_hub.format_version": "1",
        "pcrlv2_hub.architecture": "pcrlv2_unet3d",
        "pcrlv2_hub.arguments": json.dumps(ARGUMENTS),
        "pcrlv2_hub.provenance": "{}",
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(old), metadata=metadata)
    with pytest.warns(UnverifiedWeightsWarning, match="could not be verified"):
        model = pcrlv2_hub.load(weights=old)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert verify(old).tensor_digest is None


def test_verify_reports_the_digest(exported: Path, capsys):
    assert verify(exported).tensor_digest == read_metadata(exported).tensor_digest
    assert main(["verify", str(exported)]) == 0
    assert f"tensor digest ok ({read_metadata(exported).tensor_digest})" in capsys.readouterr().out
    tensors, _ = read_weights(exported)
    assert set(tensors) == set(small_network(0).state_dict())
