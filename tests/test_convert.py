"""Official PCRLv2 checkpoints (pickles) convert safely and load strictly, tensor for tensor."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from conftest import flip_bit_in_largest_member

import pcrlv2_hub
from pcrlv2_hub.cli import main
from pcrlv2_hub.convert import convert_official
from pcrlv2_hub.weights_file import read_weights, sha256_file

DATA = Path(__file__).parent / "data"


def official_state_dict(reference: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the names, shapes and dtypes of an official checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    listing = json.loads((DATA / reference).read_text())["state_dict"]
    state_dict = {}
    for name, shape, dtype in listing:
        if dtype == "int64":
            state_dict[name] = torch.tensor(240 * 100, dtype=torch.int64).reshape(shape)
        elif name.endswith("running_var"):
            state_dict[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state_dict[name] = torch.randn(shape, generator=generator) * 0.05
    return state_dict


def save_official(path: Path, state_dict: dict[str, torch.Tensor], dataset: str) -> Path:
    """Pickled like the authors' files: options Namespace, weights, optimizer state, epoch."""
    options = argparse.Namespace(
        data="/data/processed", model="pcrlv2", phase="pretask", b=32, epochs=240, lr=1e-3,
        output="saved", n=dataset, d=3 if dataset == "luna" else 2, workers=4, gpus="0,1,2,3",
        ratio=1.0, momentum=0.9, weight=None, weight_decay=1e-4, seed=42, amp=True,
    )  # fmt: skip
    first = next(iter(state_dict.values()))
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros_like(first)}},
                 "param_groups": [{"lr": 1e-3, "momentum": 0.9, "params": [0]}]}  # fmt: skip
    torch.save(
        {"opt": options, "state_dict": state_dict, "optimizer": optimizer, "epoch": 240}, path
    )
    return path


@pytest.fixture(scope="module")
def official_3d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    state_dict = official_state_dict("pcrlv2_official_3d_state_dict.json")
    folder = tmp_path_factory.mktemp("official")
    path = save_official(folder / "simance_multi_crop_luna_pretask_1.0_240.pt", state_dict, "luna")
    return path, state_dict


def test_official_3d_checkpoint_converts_and_loads_strictly(official_3d, tmp_path: Path):
    path, state_dict = official_3d
    release = convert_official(path, tmp_path / "release")
    tensors, metadata = read_weights(release.weights_path)
    assert metadata.architecture == "pcrlv2_unet3d"
    assert metadata.arguments["widths"] == [64, 128, 256, 512]
    assert metadata.provenance["original_sha256"] == sha256_file(path)
    assert metadata.provenance["epoch"] == 240
    assert metadata.provenance["training_arguments"]["lr"] == 1e-3
    assert tensors.keys() == state_dict.keys()
    assert all(torch.equal(tensors[k], v) for k, v in state_dict.items())

    model = pcrlv2_hub.load(weights=release.weights_path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state_dict.items())

    entry = json.loads(release.snippet_path.read_text())
    assert entry["name"] == "unet3d_luna"
    assert (entry["weights"]["sha256"], entry["weights"]["size"]) == (
        release.sha256,
        os.path.getsize(release.weights_path),
    )
    card = release.card_path.read_text()
    assert card.startswith("---\nlicense: mit\nlibrary_name: pcrlv2_hub\n")
    assert "simance_multi_crop_luna_pretask_1.0_240.pt" in card and "TPAMI" in card
    assert main(["verify", str(release.weights_path)]) == 0


def test_official_pickle_loads_directly(official_3d):
    path, state_dict = official_3d
    encoder = pcrlv2_hub.load_encoder(weights=path)
    assert all(torch.equal(v, state_dict[k]) for k, v in encoder.state_dict().items())


def test_official_2d_encoder_converts_and_fits_timm_resnet18(tmp_path: Path):
    state_dict = official_state_dict("pcrlv2_official_2d_encoder_state_dict.json")
    path = save_official(
        tmp_path / "simance_multi_crop_chest_pretask_1.0_240.pt", state_dict, "chest"
    )
    assert main(["convert", str(path), "-o", str(tmp_path / "release")]) == 0
    weights = tmp_path / "release" / "model.safetensors"
    tensors, metadata = read_weights(weights)
    assert metadata.architecture == "pcrlv2_resnet18_encoder"
    resnet = timm.create_model("resnet18", num_classes=0)
    resnet.load_state_dict(tensors, strict=True)
    assert all(torch.equal(resnet.state_dict()[k], v) for k, v in state_dict.items())
    entry = json.loads((tmp_path / "release" / "manifest_entry.json").read_text())
    assert (entry["name"], entry["component"], entry["dimension"]) == (
        "resnet18_chestxray",
        "encoder",
        2,
    )


def test_pickle_with_a_disallowed_global_is_refused(tmp_path: Path, capsys):
    path = tmp_path / "suspicious.pt"
    torch.save({"state_dict": {}, "opt": os.system}, path)
    assert main(["convert", str(path), "-o", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "posix.system" in error and "could run code" in error
    assert not (tmp_path / "out").exists()


def test_unrecognised_and_truncated_checkpoints(official_3d, tmp_path: Path):
    path, _ = official_3d
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(pcrlv2_hub.WeightsFormatError, match="not a readable PyTorch checkpoint"):
        convert_official(truncated, tmp_path / "out")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"linear.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(pcrlv2_hub.WeightsFormatError, match="neither the 3D PCRLv2 network"):
        convert_official(other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_flipped_byte_in_an_official_checkpoint_is_refused(official_3d, tmp_path: Path):
    """torch.load would read the damaged tensor silently; the CRC32 check refuses it."""
    path, _ = official_3d
    damaged = tmp_path / path.name
    damaged.write_bytes(path.read_bytes())
    flip_bit_in_largest_member(damaged)
    with pytest.raises(pcrlv2_hub.WeightsFormatError, match=r"damaged: its member .* CRC32"):
        convert_official(damaged, tmp_path / "out")
    with pytest.raises(pcrlv2_hub.WeightsFormatError, match=str(damaged)):
        pcrlv2_hub.load(weights=damaged)
    assert not (tmp_path / "out").exists()
