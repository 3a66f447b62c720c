"""The 2D PCRLv2 U-Net: a timm ResNet-18 encoder with the official names, and its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from pcrlv2_hub.errors import InvalidInputError
from pcrlv2_hub.models.registry import build_model, build_on_meta
from pcrlv2_hub.models.unet2d import PCRLv2UNet2D

REFERENCE = json.loads(
    (Path(__file__).parent / "data/pcrlv2_official_2d_encoder_state_dict.json").read_text()
)


def _described(state: dict) -> list:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]


@pytest.fixture(scope="module")
def net() -> PCRLv2UNet2D:
    torch.manual_seed(0)
    return PCRLv2UNet2D().eval()


@pytest.mark.parametrize("architecture", ["pcrlv2_unet2d", "pcrlv2_resnet18_encoder"])
def test_encoder_names_shapes_dtypes_equal_the_official_checkpoint(architecture):
    model = build_on_meta(architecture)
    encoder = model.encoder if architecture == "pcrlv2_unet2d" else model
    assert _described(encoder.state_dict()) == REFERENCE["state_dict"]


def test_whole_network_has_the_official_parameter_count():
    """Decoder and heads match the official model's layers, not only the encoder."""
    net = build_on_meta("pcrlv2_unet2d")
    assert sum(p.numel() for p in net.parameters()) == REFERENCE["num_full_model_parameters"]


def test_encoder_state_loads_strictly_into_timm_resnet18(net):
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    resnet.load_state_dict(net.encoder.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(resnet(x), net.encoder(x)[-1].mean(dim=(2, 3)))


def test_forward_returns_named_outputs_of_the_right_shapes(net):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = net(x)
    assert out.restoration.shape == x.shape
    assert out.restoration.min() < 0  # no activation: targets are ImageNet-normalised
    widths = (256, 128, 64, 32, 16)
    assert [level.projection.shape for level in out.levels] == [(2, w) for w in widths]
    assert [level.prediction.shape for level in out.levels] == [(2, w) for w in widths]
    assert [level.restoration.shape for level in out.levels] == [x.shape] * 5


def test_local_mode_and_supervise(net):
    with torch.no_grad():
        local = net(torch.randn(2, 3, 32, 32), local=True)
        one = net(torch.randn(2, 3, 32, 32), supervise=[3])
    assert local.restoration is None
    assert [level.restoration for level in local.levels] == [None] * 5
    assert one.restoration is not None
    assert [i for i, lv in enumerate(one.levels) if lv.restoration is not None] == [3]


def test_arguments_change_channels_and_widths():
    model = PCRLv2UNet2D(in_channels=1, out_channels=1, decoder_widths=(32, 16, 16, 8, 8))
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 1, 32, 32))
    assert out.restoration.shape == (1, 1, 32, 32)
    assert [level.projection.shape[1] for level in out.levels] == [32, 16, 16, 8, 8]


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 1, 64, 64), r"\(B, 3, H, W\)"), ((1, 3, 64, 48), "divisible by 32")],
)
def test_bad_input_shapes_raise_a_clear_error(net, shape, message):
    with pytest.raises(InvalidInputError, match=message):
        net(torch.randn(shape))


def test_bad_decoder_widths_raise_a_clear_error():
    with pytest.raises(InvalidInputError, match="decoder_widths"):
        build_model("pcrlv2_unet2d", decoder_widths=(256, 128, 64, 32))
