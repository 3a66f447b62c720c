"""The skip-less decoder pyramid that the 3D and 2D PCRLv2 networks share.

Both decoders are a chain of levels, coarse to fine; each level upsamples and convolves,
then its heads read the result: the projection z and prediction p that the comparison
losses use, and a deep-supervision image that the multi-scale restoration loss uses.
Only the layers differ between 3D and 2D, so the level's heads and the loop live here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError
from .outputs import PCRLv2Output, PyramidLevel

_RESIZE_MODE = {4: "bilinear", 5: "trilinear"}


class PyramidStage(nn.Module):
    """One decoder level. Subclasses build ``forward`` (upsample + convs) and three heads.

    ``bn`` is :func:`~.heads.projection_norm`, ``predictor_head`` is
    :func:`~.heads.prediction_mlp` and ``deep_supervision_head`` maps the level's
    features to an image; subclasses register them in the official checkpoint's order.
    """

    bn: nn.Module
    predictor_head: nn.Module
    deep_supervision_head: nn.Module

    def project(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Global-average-pool to z, then the predictor MLP to p."""
        projection = self.bn(features.mean(dim=tuple(range(2, features.dim()))))
        return projection, self.predictor_head(projection)


def decode_pyramid(
    stages: Sequence[PyramidStage],
    final_head: nn.Module,
    features: Tensor,
    size: Sequence[int],
    local: bool = False,
    supervise: Iterable[int] | None = None,
) -> PCRLv2Output:
    """Run ``stages`` on the encoder's deepest ``features``, collecting each level's heads.

    ``supervise`` picks the levels (0 = coarsest) whose deep-supervision image is computed
    and resized to ``size``; by default all of them, in ``local`` mode none. ``local`` also
    skips ``final_head``: local views only feed the comparison losses.
    """
    if supervise is None:
        supervise = () if local else range(len(stages))
    supervised = set(supervise)
    if not supervised <= set(range(len(stages))):
        raise InvalidInputError(
            f"supervise={sorted(supervised)} names levels this decoder does not have; "
            f"choose among 0 (coarsest) .. {len(stages) - 1} (finest)."
        )
    h = features
    levels = []
    for index, stage in enumerate(stages):
        h = stage(h)
        projection, prediction = stage.project(h)
        restoration = None
        if index in supervised:
            restoration = stage.deep_supervision_head(h)
            if restoration.shape[2:] != tuple(size):
                restoration = F.interpolate(
                    restoration, size=tuple(size), mode=_RESIZE_MODE[restoration.dim()]
                )
        levels.append(PyramidLevel(projection, prediction, restoration))
    return PCRLv2Output(None if local else final_head(h), tuple(levels))
