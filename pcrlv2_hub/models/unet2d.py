"""The 2D PCRLv2 network: a ResNet-18 encoder and a decoder *without* skip connections.

The authors built it from segmentation_models_pytorch's ``Unet('resnet18')`` and replaced
its decoder with five skip-less blocks carrying the PCRLv2 heads. Here the encoder is the
timm ResNet-18 (same tensor names as torchvision's, minus ``fc``, which is all the
official 2D checkpoint holds); decoder and head names follow the official model without
its ``model.`` prefix (``decoder.blocks.0.conv1.0.weight``, ``segmentation_head.0.weight``).
The restoration targets are ImageNet-normalised images, so no head ends in an activation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import timm
from torch import Tensor, nn

from ..errors import InvalidInputError
from .heads import prediction_mlp, projection_norm
from .outputs import PCRLv2Output
from .padding import check_input_shape
from .pyramid import PyramidStage, decode_pyramid
from .recompute import keep_as_recipe, norm_relu

DEFAULT_DECODER_WIDTHS_2D = (256, 128, 64, 32, 16)
STRIDE_2D = 32  # ResNet-18's deepest map; five x2 upsamplings bring it back to full size


def resnet18_encoder(in_channels: int = 3) -> nn.Module:
    """timm's ResNet-18 as a ``features_only`` encoder: five maps, strides 2 to 32."""
    return timm.create_model("resnet18", features_only=True, pretrained=False, in_chans=in_channels)


class ConvBNReLU2d(nn.Sequential):
    """3x3 convolution (no bias: BN follows), BN, ReLU (smp's ``Conv2dReLU``); a
    Sequential for the official names, its output kept as a recipe (``recompute.py``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        conv, norm, _ = self
        return norm_relu(norm, conv(x))


class DecoderStage2D(PyramidStage):
    """Nearest x2 upsampling and two conv-BN-ReLU, with this level's PCRLv2 heads."""

    def __init__(self, in_channels: int, width: int, out_channels: int):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1 = ConvBNReLU2d(in_channels, width)
        self.conv2 = ConvBNReLU2d(width, width)
        self.bn = projection_norm(width)
        self.deep_supervision_head = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_channels, kernel_size=1),
        )
        self.predictor_head = prediction_mlp(width)

    def forward(self, x: Tensor) -> Tensor:
        upsampled = self.upsample(x)
        keep_as_recipe(upsampled, lambda: self.upsample(x))  # 4x the size of its input
        return self.conv2(self.conv1(upsampled))


class Decoder2D(nn.Module):
    """The five decoder levels, coarse to fine (a module of its own for the official names)."""

    def __init__(self, in_channels: int, widths: Sequence[int], out_channels: int):
        super().__init__()
        inputs = (in_channels, *widths[:-1])
        self.blocks = nn.ModuleList(
            DecoderStage2D(i, w, out_channels) for i, w in zip(inputs, widths, strict=True)
        )


class PCRLv2UNet2D(nn.Module):
    """The 2D pretraining network: ResNet-18 encoder, skip-less decoder, per-level heads.

    ``forward(x)`` returns :class:`PCRLv2Output` exactly like the 3D network:
    ``local=True`` computes only projections and predictions; ``supervise`` picks the
    levels (0 = coarsest) whose deep-supervision image is computed. Spatial sizes must be
    divisible by 32.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        decoder_widths: Sequence[int] = DEFAULT_DECODER_WIDTHS_2D,
    ):
        super().__init__()
        decoder_widths = tuple(int(w) for w in decoder_widths)
        if len(decoder_widths) != len(DEFAULT_DECODER_WIDTHS_2D) or min(decoder_widths) < 1:
            raise InvalidInputError(
                f"decoder_widths={decoder_widths} must be {len(DEFAULT_DECODER_WIDTHS_2D)} "
                f"positive numbers (one per x2 upsampling), e.g. {DEFAULT_DECODER_WIDTHS_2D}."
            )
        self.decoder_widths = decoder_widths
        self.encoder = resnet18_encoder(in_channels)
        self.decoder = Decoder2D(
            self.encoder.feature_info.channels()[-1], decoder_widths, out_channels
        )
        # The official segmentation head is smp's SegmentationHead, a Sequential.
        self.segmentation_head = nn.Sequential(
            nn.Conv2d(decoder_widths[-1], out_channels, kernel_size=3, padding=1)
        )
        self._initialise_like_official()

    def _initialise_like_official(self) -> None:
        """The official decoder/head initialisation (the encoder keeps timm's)."""
        for module in self.decoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                nn.init.zeros_(module.bias)
        head = self.segmentation_head[0]
        nn.init.xavier_uniform_(head.weight)
        nn.init.zeros_(head.bias)

    @property
    def in_channels(self) -> int:
        return self.encoder.conv1.in_channels

    def decoder_stages(self) -> list[DecoderStage2D]:
        return list(self.decoder.blocks)

    def forward(
        self, x: Tensor, local: bool = False, supervise: Iterable[int] | None = None
    ) -> PCRLv2Output:
        check_input_shape(x, spatial_dims=2, channels=self.in_channels, multiple=STRIDE_2D)
        deepest = self.encoder(x)[-1]
        return decode_pyramid(
            self.decoder_stages(), self.segmentation_head, deepest, x.shape[2:], local, supervise
        )
