"""The 3D PCRLv2 U-Net: official names and shapes, named outputs, its modes, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pcrlv2_hub.errors import InvalidInputError
from pcrlv2_hub.models.registry import build_model, build_on_meta
from pcrlv2_hub.models.unet3d import PCRLv2UNet3D

REFERENCE = json.loads(
    (Path(__file__).parent / "data/pcrlv2_official_3d_state_dict.json").read_text()
)
SMALL = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def small_net() -> PCRLv2UNet3D:
    torch.manual_seed(0)
    return PCRLv2UNet3D(widths=SMALL).eval()


def test_state_dict_names_shapes_dtypes_equal_the_official_checkpoint():
    net = build_on_meta("pcrlv2_unet3d")
    ours = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in net.state_dict().items()
    ]
    assert ours == REFERENCE["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == REFERENCE["num_parameters"]


def test_an_official_format_state_dict_loads_strictly():
    state = {
        name: torch.zeros(shape, dtype=getattr(torch, dtype))
        for name, shape, dtype in REFERENCE["state_dict"]
    }
    net = build_on_meta("pcrlv2_unet3d")
    net.load_state_dict(state, strict=True, assign=True)
    assert not any(t.is_meta for t in net.state_dict().values())


def test_forward_returns_named_outputs_of_the_right_shapes(small_net):
    x = torch.rand(2, 1, 16, 16, 24)
    with torch.no_grad():
        out = small_net(x)
    assert out.restoration.shape == x.shape
    assert out.restoration.min() >= 0 and out.restoration.max() <= 1  # sigmoid head
    assert [level.projection.shape for level in out.levels] == [(2, 32), (2, 16), (2, 8)]
    assert [level.prediction.shape for level in out.levels] == [(2, 32), (2, 16), (2, 8)]
    assert [level.restoration.shape for level in out.levels] == [x.shape] * 3


def test_local_mode_computes_no_restoration(small_net):
    with torch.no_grad():
        out = small_net(torch.rand(2, 1, 8, 8, 8), local=True)
    assert out.restoration is None
    assert [level.restoration for level in out.levels] == [None] * 3
    assert [level.prediction.shape for level in out.levels] == [(2, 32), (2, 16), (2, 8)]


@pytest.mark.parametrize("level", [0, 1, 2])
def test_supervise_computes_only_the_chosen_level(small_net, level):
    with torch.no_grad():
        out = small_net(torch.rand(1, 1, 16, 16, 16), supervise=[level])
    assert out.restoration is not None
    computed = [i for i, lv in enumerate(out.levels) if lv.restoration is not None]
    assert computed == [level]


def test_supervise_rejects_a_level_the_decoder_does_not_have(small_net):
    with pytest.raises(InvalidInputError, match="supervise"):
        small_net(torch.rand(1, 1, 8, 8, 8), supervise=[3])


def test_no_activation_is_kept_between_calls():
    net = PCRLv2UNet3D(widths=SMALL)  # train mode, as in pretraining
    net(torch.rand(2, 1, 8, 8, 8)).restoration.sum().backward()
    kept = [
        (type(module).__name__, name)
        for module in net.modules()
        for name, value in vars(module).items()
        if isinstance(value, torch.Tensor)
    ]
    assert kept == []


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 8, 8, 8), r"\(B, 1, D, H, W\)"),  # no channel axis
        ((1, 2, 8, 8, 8), r"\(B, 1, D, H, W\)"),  # wrong channels
        ((1, 1, 8, 12, 8), "divisible by 8.*pad_to_multiple"),
    ],
)
def test_bad_input_shapes_raise_a_clear_error(small_net, shape, message):
    with pytest.raises(InvalidInputError, match=message):
        small_net(torch.rand(shape))


@pytest.mark.parametrize("widths", [(8, 16, 32), (8, 16, 32, 63)])
def test_bad_widths_raise_a_clear_error(widths):
    with pytest.raises(InvalidInputError, match="widths"):
        build_model("pcrlv2_unet3d", widths=widths)
