"""The per-level heads shared by the 3D and 2D PCRLv2 decoders.

At every decoder level PCRLv2 pools the feature map to a vector and normalises it (the
*projection* z), then maps it through a small MLP (the *prediction* p). The comparison
loss matches p of one view against a stop-gradient z of another, SimSiam-style, so the
predictor is what keeps the two branches from collapsing to a constant.
"""

from __future__ import annotations

from torch import nn


def projection_norm(channels: int) -> nn.BatchNorm1d:
    """BatchNorm1d over the pooled feature: the projection z (official name ``bn``)."""
    return nn.BatchNorm1d(channels)


def prediction_mlp(channels: int) -> nn.Sequential:
    """Linear(C, 2C) - BN - ReLU - Linear(2C, C): the prediction p (``predictor_head``)."""
    return nn.Sequential(
        nn.Linear(channels, 2 * channels),
        nn.BatchNorm1d(2 * channels),
        nn.ReLU(inplace=True),
        nn.Linear(2 * channels, channels),
    )
