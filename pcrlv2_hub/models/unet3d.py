"""The 3D PCRLv2 network: a four-stage CNN encoder and a decoder *without* skip connections.

Without skips the encoder alone must carry enough detail to restore the input, which is
the point of PCRLv2's "visual information preservation". Module and parameter names
follow the official checkpoint (``down_tr64.ops.0.conv1.weight`` ...), so converted
official weights load with ``strict=True``; the names are historic labels and stay the
same when ``widths`` change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import InvalidInputError
from .heads import prediction_mlp, projection_norm
from .norms import norm3d
from .outputs import PCRLv2Output
from .padding import check_input_shape
from .pyramid import PyramidStage, decode_pyramid
from .recompute import keep_as_recipe, norm_relu

if TYPE_CHECKING:
    from timm.models import FeatureInfo

DEFAULT_WIDTHS_3D = (64, 128, 256, 512)
STAGE_NAMES_3D = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
DECODER_NAMES_3D = ("up_tr256", "up_tr128", "up_tr64")
STRIDE_3D = 2 ** (len(STAGE_NAMES_3D) - 1)


class ConvNormAct3d(nn.Module):
    """3x3x3 convolution, normalisation, activation (the official ``LUConv``)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, activation: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = norm3d(norm, out_channels)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.activation, nn.ReLU):
            return norm_relu(self.bn1, self.conv1(x))
        return self.activation(self.bn1(self.conv1(x)))


def _two_convs(in_channels: int, mid_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        ConvNormAct3d(in_channels, mid_channels, norm, nn.ReLU(inplace=True)),
        ConvNormAct3d(mid_channels, out_channels, norm, nn.ReLU(inplace=True)),
    )


class EncoderStage3D(nn.Module):
    """Two conv-norm-ReLU blocks; the first has half the stage width, as in the original."""

    def __init__(self, in_channels: int, width: int, norm: str):
        super().__init__()
        self.ops = _two_convs(in_channels, width // 2, width, norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.ops(x)


class DecoderStage3D(PyramidStage):
    """Transposed-conv x2 upsampling and two convs, with this level's PCRLv2 heads."""

    def __init__(self, in_channels: int, width: int, norm: str):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(in_channels, in_channels, kernel_size=2, stride=2)
        self.ops = _two_convs(in_channels, width, width, norm)
        self.bn = projection_norm(width)
        self.predictor_head = prediction_mlp(width)
        self.deep_supervision_head = ConvNormAct3d(width, 1, norm, nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        upsampled = self.up_conv(x)
        keep_as_recipe(upsampled, lambda: self.up_conv(x))  # 8x the size of its input
        return self.ops(upsampled)


class OutputHead3D(nn.Module):
    """1x1x1 convolution and sigmoid: the restored image in [0, 1]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.final_conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.final_conv(x))


class Encoder3D(nn.Module):
    """The PCRLv2 3D encoder; ``forward`` returns one feature map per stage, fine to coarse.

    ``feature_info`` is a timm ``FeatureInfo`` giving each map's channels and stride
    relative to the input, as on a timm ``features_only`` model.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS_3D,
        norm: str = "bn",
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != len(STAGE_NAMES_3D) or any(w < 2 or w % 2 for w in widths):
            raise InvalidInputError(
                f"widths={widths} must be {len(STAGE_NAMES_3D)} even numbers, "
                f"e.g. the paper's {DEFAULT_WIDTHS_3D}."
            )
        self.widths = widths
        self.norm = norm
        self.maxpool = nn.MaxPool3d(2)
        previous = in_channels
        for name, width in zip(STAGE_NAMES_3D, widths, strict=True):
            self.add_module(name, EncoderStage3D(previous, width, norm))
            previous = width

    @property
    def feature_info(self) -> FeatureInfo:
        """Built when asked for: importing timm (and torchvision) costs 2 s and 0.2 GB that
        3D pretraining and inference have no other use for."""
        from timm.models import FeatureInfo

        return FeatureInfo(
            [
                {"num_chs": w, "reduction": 2**i, "module": n}
                for i, (n, w) in enumerate(zip(STAGE_NAMES_3D, self.widths, strict=True))
            ],
            out_indices=range(len(self.widths)),
        )

    @property
    def in_channels(self) -> int:
        """Read from the stem convolution, so it stays true after ``adapt_in_channels``."""
        return self.stages()[0].ops[0].conv1.in_channels

    def stages(self) -> list[EncoderStage3D]:
        return [getattr(self, name) for name in STAGE_NAMES_3D]

    def check_input(self, x: Tensor) -> None:
        """Fail early, with the fix, on inputs the network cannot take."""
        check_input_shape(x, spatial_dims=3, channels=self.in_channels, multiple=STRIDE_3D)

    def forward(self, x: Tensor) -> list[Tensor]:
        self.check_input(x)
        features = []
        for i, stage in enumerate(self.stages()):
            x = stage(self.maxpool(x) if i else x)
            features.append(x)
        return features


class PCRLv2UNet3D(Encoder3D):
    """The full pretraining network: encoder, skip-less decoder, per-level heads.

    It extends :class:`Encoder3D` rather than wrapping it so that parameter names stay
    flat, exactly as in the official checkpoint.

    ``forward(x)`` returns :class:`PCRLv2Output`. ``local=True`` is the mode for small
    local views: only projections and predictions are computed (no restorations).
    ``supervise`` picks the levels (0 = coarsest) whose deep-supervision restoration is
    computed; by default all of them, in local mode none.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = DEFAULT_WIDTHS_3D,
        norm: str = "bn",
    ):
        super().__init__(in_channels, widths, norm)
        self.out_channels = out_channels
        decoder_widths = self.widths[-2::-1]
        previous = self.widths[-1]
        for name, width in zip(DECODER_NAMES_3D, decoder_widths, strict=True):
            self.add_module(name, DecoderStage3D(previous, width, norm))
            previous = width
        self.out_tr = OutputHead3D(previous, out_channels)

    def decoder_stages(self) -> list[DecoderStage3D]:
        return [getattr(self, name) for name in DECODER_NAMES_3D]

    def forward(
        self, x: Tensor, local: bool = False, supervise: Iterable[int] | None = None
    ) -> PCRLv2Output:
        deepest = super().forward(x)[-1]
        return decode_pyramid(
            self.decoder_stages(), self.out_tr, deepest, x.shape[2:], local, supervise
        )
