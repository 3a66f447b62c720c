"""Transfer-learning encoders: feature info, state extraction, input-channel adaptation, pooling."""

from __future__ import annotations

import pytest
import torch
from timm.models import FeatureInfo

from pcrlv2_hub.errors import IncompatibleWeightsError, InvalidInputError, UnknownModelError
from pcrlv2_hub.models.encoders import (
    PooledEncoder,
    adapt_in_channels,
    build_encoder,
    encoder_state_dict,
)
from pcrlv2_hub.models.registry import build_model
from pcrlv2_hub.models.unet3d import Encoder3D

ARGS_3D = {"in_channels": 1, "out_channels": 1, "widths": (8, 16, 32, 64), "norm": "bn"}
ARGS_2D = {"in_channels": 3, "out_channels": 3, "decoder_widths": (32, 16, 16, 8, 8)}


def _trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm statistics away from their defaults, as a trained network has."""
    with torch.no_grad():
        for name, buffer in net.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize(
    ("architecture", "arguments", "channels", "reductions", "x"),
    [
        ("pcrlv2_unet3d", ARGS_3D, [8, 16, 32, 64], [1, 2, 4, 8], torch.rand(1, 1, 16, 16, 8)),
        ("pcrlv2_unet2d", ARGS_2D, [64, 64, 128, 256, 512], [2, 4, 8, 16, 32], None),
    ],
)
def test_feature_info_describes_the_feature_maps(architecture, arguments, channels, reductions, x):
    encoder = build_encoder(architecture, arguments).eval()
    assert isinstance(encoder.feature_info, FeatureInfo)
    assert encoder.feature_info.channels() == channels
    assert encoder.feature_info.reduction() == reductions
    x = torch.rand(1, 3, 64, 32) if x is None else x
    with torch.no_grad():
        maps = encoder(x)
    assert [m.shape[1] for m in maps] == channels
    assert [tuple(m.shape[2:]) for m in maps] == [
        tuple(s // r for s in x.shape[2:]) for r in reductions
    ]


def test_3d_encoder_state_gives_the_same_features_as_the_whole_network():
    torch.manual_seed(0)
    net = _trained_like(build_model("pcrlv2_unet3d", **ARGS_3D))
    state = encoder_state_dict("pcrlv2_unet3d", net.state_dict())
    assert sorted(state) == sorted(k for k in net.state_dict() if k.startswith("down_tr"))
    encoder = build_encoder("pcrlv2_unet3d", ARGS_3D).eval()
    encoder.load_state_dict(state, strict=True)
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        for ours, theirs in zip(encoder(x), Encoder3D.forward(net, x), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_2d_encoder_state_drops_the_prefix_and_loads_strictly():
    net = build_model("pcrlv2_unet2d", **ARGS_2D)
    state = encoder_state_dict("pcrlv2_unet2d", net.state_dict())
    assert list(state) == list(net.encoder.state_dict())
    build_encoder("pcrlv2_unet2d", ARGS_2D).load_state_dict(state, strict=True)
    official = build_model("pcrlv2_resnet18_encoder").state_dict()
    assert list(encoder_state_dict("pcrlv2_resnet18_encoder", official)) == list(state)


def test_bad_architecture_arguments_or_weights_raise_clear_errors():
    with pytest.raises(UnknownModelError, match="pcrlv2_unet3d"):
        build_encoder("unet9d", {})
    with pytest.raises(InvalidInputError, match="widhts"):
        build_encoder("pcrlv2_unet3d", {"widhts": (8, 16, 32, 64)})
    resnet_state = build_model("pcrlv2_resnet18_encoder").state_dict()
    with pytest.raises(IncompatibleWeightsError, match="down_tr"):
        encoder_state_dict("pcrlv2_unet3d", resnet_state)


def _features(encoder: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        maps = encoder(x)
    assert all(m.count_nonzero() > m.numel() // 10 for m in maps)  # a comparison that can fail
    return maps


def test_3d_stem_adapted_from_1_to_4_channels_keeps_the_features():
    torch.manual_seed(0)
    encoder = _trained_like(build_encoder("pcrlv2_unet3d", ARGS_3D))
    volume = torch.rand(2, 1, 16, 16, 16)
    before = _features(encoder, volume)
    assert adapt_in_channels(encoder, 4) is encoder
    assert encoder.in_channels == 4
    after = _features(encoder, volume.expand(-1, 4, -1, -1, -1))
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidInputError, match=r"\(B, 4, D, H, W\)"):
        encoder(volume)


@pytest.mark.parametrize("channels", [1, 4])
def test_2d_rgb_stem_adapted_to_n_channels_keeps_the_features(channels):
    torch.manual_seed(0)
    encoder = _trained_like(build_encoder("pcrlv2_resnet18_encoder", {}))
    image = torch.randn(2, 1, 64, 64)
    before = _features(encoder, image.expand(-1, 3, -1, -1))
    adapt_in_channels(encoder, channels)
    after = _features(encoder, image.expand(-1, channels, -1, -1))
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels", [0, 2.0, True])
def test_adapt_in_channels_rejects_a_bad_count(channels):
    with pytest.raises(InvalidInputError, match="in_channels"):
        adapt_in_channels(build_encoder("pcrlv2_unet3d", ARGS_3D), channels)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_pooled_encoder_gives_one_vector_per_input(pool):
    encoder = build_encoder("pcrlv2_unet3d", ARGS_3D).eval()
    pooled = PooledEncoder(encoder, pool=pool)
    assert pooled.num_features == 64
    assert pooled.feature_info.channels() == [8, 16, 32, 64]
    x = torch.rand(3, 1, 16, 16, 16)
    with torch.no_grad():
        vectors, deepest = pooled(x), encoder(x)[-1]
    expected = deepest.mean(dim=(2, 3, 4)) if pool == "avg" else deepest.amax(dim=(2, 3, 4))
    torch.testing.assert_close(vectors, expected)


def test_pooled_encoder_rejects_an_unknown_pool():
    with pytest.raises(InvalidInputError, match="'avg' or 'max'"):
        PooledEncoder(build_encoder("pcrlv2_unet3d", ARGS_3D), pool="sum")
