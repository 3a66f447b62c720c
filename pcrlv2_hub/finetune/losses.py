"""Segmentation loss: soft Dice on the foreground classes plus cross-entropy.

Cross-entropy alone is dominated by the background when the structure is small; soft Dice
measures the overlap that is reported, and the cross-entropy term keeps early gradients
well behaved. Both take raw logits ``(B, K, *spatial)`` and label maps ``(B, *spatial)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """``1 - mean_k 2 sum(p_k t_k) / (sum p_k + sum t_k)`` over the classes k >= 1.

    ``p_k`` is the softmax probability of class k and ``t_k`` its one-hot target, summed over
    the batch and all voxels; ``smooth`` keeps a batch without foreground finite.
    """
    probabilities = logits.softmax(dim=1)[:, 1:]
    one_hot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1)[:, 1:].to(logits.dtype)
    dims = (0, *range(2, logits.dim()))
    overlap = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    return 1 - ((2 * overlap + smooth) / (total + smooth)).mean()


def dice_ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Soft Dice (foreground) + cross-entropy, with equal weights."""
    return soft_dice_loss(logits, target) + F.cross_entropy(logits, target.long())
