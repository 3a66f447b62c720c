"""The skip-connection U-Net around a pretrained encoder, and its transfer report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pcrlv2_hub.errors import IncompatibleWeightsError, InvalidInputError
from pcrlv2_hub.models.encoders import adapt_in_channels, encoder_state_dict
from pcrlv2_hub.models.padding import pad_to_multiple
from pcrlv2_hub.models.registry import build_model
from pcrlv2_hub.models.segmentation import build_segmentation

ARGS_3D = {"in_channels": 1, "out_channels": 1, "widths": (8, 16, 32, 64), "norm": "bn"}
ARGS_2D = {"in_channels": 3, "out_channels": 3, "decoder_widths": (32, 16, 16, 8, 8)}


def _pretrained_state(architecture: str, arguments: dict) -> dict[str, torch.Tensor]:
    """A network's encoder after a training step: weights and BN statistics off their init."""
    torch.manual_seed(0)
    net = build_model(architecture, **arguments)
    x = torch.randn(2, net.in_channels, *(32,) * (3 if architecture.endswith("3d") else 2))
    with torch.no_grad():
        net(x)  # updates the BatchNorm running statistics
        for parameter in net.parameters():
            parameter.add_(0.01)
    return encoder_state_dict(architecture, net.state_dict())


@pytest.mark.parametrize(
    ("architecture", "arguments", "shape"),
    [("pcrlv2_unet3d", ARGS_3D, (2, 1, 16, 16, 8)), ("pcrlv2_unet2d", ARGS_2D, (2, 3, 64, 32))],
)
def test_skip_unet_holds_the_pretrained_encoder_exactly(architecture, arguments, shape):
    state = _pretrained_state(architecture, arguments)
    model, report = build_segmentation(architecture, arguments, num_classes=4, encoder_state=state)
    held = model.encoder.state_dict()
    assert held.keys() == state.keys()
    assert all(torch.equal(held[k], state[k]) for k in state)
    assert sorted(report.loaded) == sorted(f"encoder.{k}" for k in state)
    new = {k for k in model.state_dict() if not k.startswith("encoder.")}
    assert report.not_loaded == dict.fromkeys(new, "new layer")
    assert report.unused == []
    assert "new layer" in str(report)
    with torch.no_grad():
        logits = model.eval()(torch.randn(shape))
    assert logits.shape == (shape[0], 4, *shape[2:])


def test_decoder_has_skip_connections_at_every_encoder_scale():
    model, _ = build_segmentation("pcrlv2_unet3d", ARGS_3D, num_classes=2, encoder_state=None)
    first_convs = [block.convs[0] for block in model.decoder]
    # up-sampled channels + the encoder's channels at that scale
    assert [conv.in_channels for conv in first_convs] == [32 + 32, 16 + 16, 8 + 8]


def test_official_2d_encoder_goes_into_the_2d_skip_unet():
    official = build_model("pcrlv2_resnet18_encoder").state_dict()
    state = encoder_state_dict("pcrlv2_resnet18_encoder", official)
    model, report = build_segmentation("pcrlv2_resnet18_encoder", {}, 2, state)
    assert len(report.loaded) == len(official)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_report_lists_shape_mismatches_and_unused_tensors():
    state = _pretrained_state("pcrlv2_unet3d", ARGS_3D)
    stem = "down_tr64.ops.0.conv1.weight"
    state[stem] = torch.zeros(4, 2, 3, 3, 3)
    state["down_tr1024.weight"] = torch.zeros(1)
    _, report = build_segmentation("pcrlv2_unet3d", ARGS_3D, 2, state)
    expected = "shape mismatch (pretrained (4, 2, 3, 3, 3) vs network (4, 1, 3, 3, 3))"
    assert report.not_loaded[f"encoder.{stem}"] == expected
    assert report.unused == ["down_tr1024.weight"]
    assert expected in str(report)
    assert "down_tr1024.weight" in str(report)


def test_weights_of_another_network_raise_instead_of_loading_nothing():
    state_2d = _pretrained_state("pcrlv2_unet2d", ARGS_2D)
    with pytest.raises(IncompatibleWeightsError, match="none of the"):
        build_segmentation("pcrlv2_unet3d", ARGS_3D, 2, state_2d)


def test_scratch_model_reports_every_tensor_as_not_loaded():
    model, report = build_segmentation("pcrlv2_unet3d", ARGS_3D, 2, encoder_state=None)
    assert report.loaded == []
    assert len(report.not_loaded) == len(model.state_dict())


def test_decoder_uses_the_encoders_normalisation():
    model, _ = build_segmentation("pcrlv2_unet3d", {**ARGS_3D, "norm": "gn"}, 2, None)
    assert isinstance(model.decoder[0].convs[1], nn.GroupNorm)


def test_four_channel_input_after_adapting_the_stem():
    model, _ = build_segmentation("pcrlv2_unet3d", ARGS_3D, 3, None)
    adapt_in_channels(model, 4)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 4, 8, 8, 8)).shape == (1, 3, 8, 8, 8)


def test_indivisible_input_fails_clearly_and_padding_fixes_it():
    model, _ = build_segmentation("pcrlv2_unet3d", ARGS_3D, 2, None)
    volume = torch.randn(1, 1, 13, 16, 10)
    with pytest.raises(InvalidInputError, match="pad_to_multiple"):
        model(volume)
    padded, crop = pad_to_multiple(volume, 8)
    with torch.no_grad():
        assert model.eval()(padded)[crop].shape == (1, 2, 13, 16, 10)


def test_bad_number_of_classes_raises_a_clear_error():
    with pytest.raises(InvalidInputError, match="num_classes"):
        build_segmentation("pcrlv2_unet3d", ARGS_3D, 0, None)
