"""Weights files that verify themselves: a digest of the tensors, recorded and checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL_WIDTHS, flip_tensor_byte, small_network
from safetensors.torch import save_file

import pcrlv2_hub
from pcrlv2_hub import ChecksumMismatchError, UnverifiedWeightsWarning
from pcrlv2_hub.cli import main
from pcrlv2_hub.finetune.networks import build_network
from pcrlv2_hub.finetune.tasks import TASKS
from pcrlv2_hub.tensor_digest import PREFIX, STREAM_PREFIX, tensor_digest
from pcrlv2_hub.verify import verify
from pcrlv2_hub.weights_file import read_metadata, read_weights, save_weights

ARGUMENTS = {"widths": list(SMALL_WIDTHS)}


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return save_weights(
        tmp_path / "model.safetensors", small_network(0).state_dict(), "pcrlv2_unet3d", ARGUMENTS
    )


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
    assert reference.startswith(PREFIX)
    assert tensor_digest(tensors, STREAM_PREFIX).startswith(STREAM_PREFIX)
    assert tensor_digest({"b": tensors["b"], "a": tensors["a"]}) == reference  # order-free
    assert tensor_digest({"a2": tensors["a"], "b": tensors["b"]}) != reference
    assert tensor_digest({**tensors, "a": tensors["a"].view(2, 3)}) != reference
    assert tensor_digest({**tensors, "a": tensors["a"].view(torch.int32)}) != reference
    assert tensor_digest({**tensors, "c": torch.zeros(0)}) != reference


def test_a_format_2_file_still_verifies(tmp_path: Path):
    """Files written before the tree digest record one sha256 stream: still checked."""
    state = {k: v.contiguous() for k, v in small_network(0).state_dict().items()}
    described = {
        "format_version": "2",
        "architecture": "pcrlv2_unet3d",
        "arguments": ARGUMENTS,
        "provenance": {},
        "tensor_digest": tensor_digest(state, STREAM_PREFIX),
    }
    old = tmp_path / "format2.safetensors"
    save_file(state, str(old), metadata={"pcrlv2_hub": json.dumps(described)})
    model = pcrlv2_hub.load(weights=old)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    flip_tensor_byte(old, "down_tr64.ops.0.conv1.weight")
    with pytest.raises(ChecksumMismatchError, match="do not match the digest"):
        pcrlv2_hub.load(weights=old)


def test_a_digest_of_an_unknown_kind_loads_with_a_notice(tmp_path: Path):
    state = {k: v.contiguous() for k, v in small_network(0).state_dict().items()}
    described = {"architecture": "pcrlv2_unet3d", "arguments": ARGUMENTS,
                 "tensor_digest": "blake9:00"}  # fmt: skip
    newer = tmp_path / "newer.safetensors"
    save_file(state, str(newer), metadata={"pcrlv2_hub": json.dumps(described)})
    with pytest.warns(UnverifiedWeightsWarning, match="cannot check .blake9"):
        pcrlv2_hub.load(weights=newer)


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
