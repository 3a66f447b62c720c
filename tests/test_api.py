"""The public API and the CLI on real files: options, encoders, discovery, verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SMALL_WIDTHS, Published
from hub_server import LoopbackHub

import pcrlv2_hub
from pcrlv2_hub import IncompatibleWeightsError, InvalidInputError, VerificationError
from pcrlv2_hub.cli import main
from pcrlv2_hub.manifest import MANIFEST_ENV
from pcrlv2_hub.models.segmentation import SegmentationUNet
from pcrlv2_hub.publish import write_release
from pcrlv2_hub.verify import verify
from pcrlv2_hub.weights_file import save_weights


def test_load_options(published: Published, tmp_path: Path):
    weights = published.release.weights_path
    model = pcrlv2_hub.load(weights=weights, device="cpu", dtype=torch.float64)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert all(p.requires_grad for p in model.parameters())

    wrapped = tmp_path / "ddp.safetensors"  # saved from a DistributedDataParallel wrapper
    state = {f"module.{k}": v for k, v in published.model.state_dict().items()}
    save_weights(wrapped, state, "pcrlv2_unet3d", {"widths": list(SMALL_WIDTHS)})
    loaded = pcrlv2_hub.load(weights=wrapped).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in published.model.state_dict().items())

    rebuilt = pcrlv2_hub.load("tiny3d", pretrained=False, widths=(4, 8, 16, 32))
    assert rebuilt.widths == (4, 8, 16, 32)
    with pytest.raises(InvalidInputError, match="name a model"):
        pcrlv2_hub.load()


def test_strictness_reports_every_misfit(published: Published, tmp_path: Path):
    with pytest.raises(IncompatibleWeightsError, match="wrong shape") as error:
        pcrlv2_hub.load(weights=published.release.weights_path, widths=(8, 16, 32, 128))
    message = str(error.value)
    assert (
        "down_tr512.ops.0.conv1.weight: file (32, 32, 3, 3, 3), network (64, 32, 3, 3, 3)"
        in message
    )
    assert "15 wrong shape" in message and "... and 7 more" in message

    partial = tmp_path / "partial.safetensors"
    state = published.model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("out_tr")} | {
        "extra": torch.ones(1)
    }
    save_weights(partial, state, "pcrlv2_unet3d", {"widths": list(SMALL_WIDTHS)})
    with pytest.raises(IncompatibleWeightsError, match="2 missing from the file") as error:
        pcrlv2_hub.load(weights=partial)
    assert "out_tr.final_conv.bias" in str(error.value) and "1 not in the network" in str(
        error.value
    )
    with pytest.warns(UserWarning, match="partial load"):
        model = pcrlv2_hub.load(weights=partial, strict=False)
    assert torch.equal(model.down_tr64.ops[0].conv1.weight, state["down_tr64.ops.0.conv1.weight"])


def test_encoder_features_pooling_and_in_channels(published: Published):
    encoder = pcrlv2_hub.load_encoder("tiny3d")
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        features = encoder(x)
        assert [f.shape[1] for f in features] == list(encoder.feature_info.channels())
        assert encoder.feature_info.reduction() == [1, 2, 4, 8]
        pooled = pcrlv2_hub.load_encoder(weights=published.release.weights_path, pool="avg")(x)
        assert torch.equal(pooled, features[-1].mean(dim=(2, 3, 4)))

        four = pcrlv2_hub.load_encoder(weights=published.release.weights_path, in_channels=4)
        adapted = four(x.repeat(1, 4, 1, 1, 1))
    for got, want in zip(adapted, features, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_segmentation_network_holds_the_pretrained_encoder(published: Published):
    model = pcrlv2_hub.load_encoder("tiny3d", segmentation_classes=3)
    assert isinstance(model, SegmentationUNet)
    source = published.model.state_dict()
    encoder = model.encoder.state_dict()
    assert encoder and all(torch.equal(v, source[k]) for k, v in encoder.items())
    assert "pretrained tensors loaded" in str(model.transfer_report)
    assert model(torch.rand(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_2d_encoder_release_loads_into_our_encoder(tmp_path: Path):
    import timm

    resnet = timm.create_model("resnet18", num_classes=0)
    release = write_release(
        tmp_path, resnet.state_dict(), "pcrlv2_resnet18_encoder", {"in_channels": 3}, {}, name="r18"
    )
    encoder = pcrlv2_hub.load_encoder(weights=release.weights_path, in_channels=1)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        grey = resnet.eval().forward_features(x.repeat(1, 3, 1, 1))
        torch.testing.assert_close(encoder(x)[-1], grey, rtol=1e-4, atol=1e-5)


def test_every_error_class_is_public():
    classes = {
        name
        for name, value in vars(pcrlv2_hub.errors).items()
        if isinstance(value, type) and value.__module__ == "pcrlv2_hub.errors"
    }
    assert classes <= set(pcrlv2_hub.__all__)
    assert all(getattr(pcrlv2_hub, name) is getattr(pcrlv2_hub.errors, name) for name in classes)


def test_discovery(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    assert pcrlv2_hub.list_models() == [
        "resnet18_chestxray",
        "resnet18_chexpert",
        "unet3d_luna",
        "unet3d_openct_small",
    ]
    assert pcrlv2_hub.list_models("resnet18_*") == ["resnet18_chestxray", "resnet18_chexpert"]
    info = pcrlv2_hub.model_info("pcrlv2_luna")
    assert info["name"] == "unet3d_luna" and info["input"]["intensity_units"] == "HU"
    info["name"] = "changed"  # a copy: the manifest is not altered
    assert pcrlv2_hub.model_info("unet3d_luna")["name"] == "unet3d_luna"


def test_cli_list_info_download_verify(
    published: Published, hub: LoopbackHub, tmp_path: Path, capsys
):
    unpublished = json.loads(json.dumps(published.entry)) | {
        "name": "later", "aliases": [], "status": "unpublished", "note": "not yet"
    }  # fmt: skip
    models = [published.entry, unpublished]
    published.manifest.write_text(json.dumps({"schema_version": 1, "models": models}))

    assert main(["list", "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["later", "tiny3d"]
    assert main(["info", "tiny"]) == 0
    assert published.commit in capsys.readouterr().out

    assert main(["download", "--all", "--to", str(tmp_path / "carry")]) == 0
    out = capsys.readouterr().out
    assert "later: skipped" in out and "sha256 verified" in out
    copied = tmp_path / "carry" / "tiny3d.safetensors"
    assert copied.read_bytes() == published.release.weights_path.read_bytes()

    assert main(["verify", "tiny3d", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sha256"] == published.release.sha256 and report["golden_values"] > 0

    entry = published.entry
    entry["golden"]["summary"][0]["mean"] += 0.1  # a release whose output changed
    (published.release.snippet_path).write_text(json.dumps(entry))
    with pytest.raises(VerificationError, match=r"output\.restoration\.mean"):
        verify(published.release.weights_path)
    assert main(["verify", str(published.release.weights_path)]) == 1
    assert "differs from the one recorded" in capsys.readouterr().err
