"""The segmentation network the PCRLv2 authors recommend: the pretrained encoder inside a
U-Net *with* skip connections.

Pretraining drops the skips so the encoder must keep the detail; for segmentation the
skips come back, and a fresh decoder learns to merge them. Only the encoder is
transferred: the pretraining decoder never saw skip features, so its first convolutions
do not fit (their input is the concatenation here), and the layers whose shapes would
fit sit behind them and would be fed features they were not trained on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import zip_longest
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import IncompatibleWeightsError, InvalidInputError
from .encoders import build_encoder, stem_convolution
from .norms import norm3d
from .padding import check_input_shape
from .unet3d import Encoder3D

_LAYERS = {2: (nn.Conv2d, nn.ConvTranspose2d), 3: (nn.Conv3d, nn.ConvTranspose3d)}

NormFactory = Callable[[int], nn.Module]


class UpBlock(nn.Module):
    """Transposed-conv x2, concatenation with the encoder map of that scale (if any), then
    two conv-norm-ReLU."""

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, dims: int, norm: NormFactory
    ):
        super().__init__()
        conv, transposed = _LAYERS[dims]
        self.up = transposed(in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = nn.Sequential(
            conv(out_channels + skip_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class SegmentationUNet(nn.Module):
    """``encoder`` (any module with the encoders' contract) + a skip decoder + a 1x1 head.

    The decoder is built from ``encoder.feature_info``: one block per coarser map, each
    upsampling to the next finer map's scale and width and concatenating it; where the
    finest map is still strided (ResNet's stride 2), blocks without skips halve the width
    until full resolution. ``forward`` returns logits (B, num_classes, *input size).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, norm: NormFactory):
        super().__init__()
        self.encoder = encoder
        self.dims = stem_convolution(encoder).weight.dim() - 2
        channels = encoder.feature_info.channels()
        reduction = encoder.feature_info.reduction()[0]
        self.stride = encoder.feature_info.reduction()[-1]
        blocks, previous = [], channels[-1]
        for skip in reversed(channels[:-1]):
            blocks.append(UpBlock(previous, skip, skip, self.dims, norm))
            previous = skip
        while reduction > 1:
            blocks.append(UpBlock(previous, 0, previous // 2, self.dims, norm))
            previous, reduction = previous // 2, reduction // 2
        self.decoder = nn.ModuleList(blocks)
        self.head = _LAYERS[self.dims][0](previous, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        channels = stem_convolution(self.encoder).in_channels
        check_input_shape(x, spatial_dims=self.dims, channels=channels, multiple=self.stride)
        features = self.encoder(x)
        h = features[-1]
        for block, skip in zip_longest(self.decoder, features[-2::-1]):
            h = block(h, skip)
        return self.head(h)


@dataclass
class TransferReport:
    """Which tensors of a network came from pretrained weights, and why the others did not.

    ``not_loaded`` maps a network key to its reason ("new layer", "not in the pretrained
    weights", "shape mismatch (pretrained a vs network b)"); ``unused`` lists pretrained
    keys the network has no tensor for.
    """

    loaded: list[str] = field(default_factory=list)
    not_loaded: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.not_loaded)
        lines = [f"pretrained tensors loaded: {len(self.loaded)} of {total}"]
        # One line per top-level module and reason ("decoder.* (42 tensors): new layer").
        grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
        for key, reason in self.not_loaded.items():
            grouped[key.split(".")[0], reason].append(key)
        if grouped:
            lines.append("not loaded (random initialisation):")
        for (module, reason), keys in grouped.items():
            what = keys[0] if len(keys) == 1 else f"{module}.* ({len(keys)} tensors)"
            lines.append(f"  {what}: {reason}")
        if self.unused:
            lines.append(
                f"pretrained tensors with no place in the network: {', '.join(self.unused)}"
            )
        return "\n".join(lines)


def load_encoder_state(
    model: SegmentationUNet, encoder_state: dict[str, Tensor] | None
) -> TransferReport:
    """Copy ``encoder_state`` into ``model.encoder`` wherever names and shapes allow."""
    encoder_state = encoder_state or {}
    own = model.encoder.state_dict()
    report = TransferReport(unused=[k for k in encoder_state if k not in own])
    fitting = {}
    for key, tensor in own.items():
        name = f"encoder.{key}"
        if key not in encoder_state:
            report.not_loaded[name] = "not in the pretrained weights"
        elif encoder_state[key].shape != tensor.shape:
            shapes = f"{tuple(encoder_state[key].shape)} vs network {tuple(tensor.shape)}"
            report.not_loaded[name] = f"shape mismatch (pretrained {shapes})"
        else:
            fitting[key] = encoder_state[key]
            report.loaded.append(name)
    if encoder_state and not fitting:
        raise IncompatibleWeightsError(
            f"none of the {len(encoder_state)} pretrained tensors fits this encoder; pass "
            f"the state from encoder_state_dict(architecture, state_dict) of the same "
            f"architecture and arguments.\n{report}"
        )
    model.encoder.load_state_dict(fitting, strict=False)
    for key in model.state_dict():
        if not key.startswith("encoder."):
            report.not_loaded[key] = "new layer"
    return report


def build_segmentation(
    architecture: str,
    arguments: dict[str, Any],
    num_classes: int,
    encoder_state: dict[str, Tensor] | None,
) -> tuple[SegmentationUNet, TransferReport]:
    """The skip U-Net around ``architecture``'s encoder, with ``encoder_state`` loaded.

    ``arguments`` are those stored with the pretrained weights; ``encoder_state`` comes
    from :func:`~.encoders.encoder_state_dict` (None: random initialisation). To feed
    other input channels, call ``adapt_in_channels(model, n)`` afterwards: the stem it
    adapts is the encoder's. Raises IncompatibleWeightsError when no pretrained tensor fits.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidInputError(f"num_classes={num_classes!r} must be a positive integer.")
    encoder = build_encoder(architecture, arguments)
    # A 3D encoder's decoder uses its normalisation (GroupNorm for small batches, ...).
    norm = partial(norm3d, encoder.norm) if isinstance(encoder, Encoder3D) else nn.BatchNorm2d
    model = SegmentationUNet(encoder, num_classes, norm)
    return model, load_encoder_state(model, encoder_state)
