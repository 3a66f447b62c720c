"""Segmentation loss: soft Dice on the foreground classes plus cross-entropy.

Cross-entropy alone is dominated by the background when the structure is small; soft Dice
measures the overlap that is reported, and the cross-entropy term keeps early gradients
well behaved. Both take raw logits ``(B, K, *spatial)`` and label maps ``(B, *spatial)``.
"""

from __future__ import annotations

import torch
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


def merge_unlabelled(logits: Tensor, labelled: Tensor) -> Tensor:
    """Logits in which each sample's unlabelled classes are folded into the background.

    ``labelled`` (B, K) is True for the classes contoured in each sample (background
    always). A voxel labelled 0 in such a sample may be background *or* any class that was
    not drawn, so its background logit becomes the log-sum-exp over all of those (the
    "marginal" loss of Shi et al., MedIA 2021); the unlabelled classes get -inf, so the
    network is neither rewarded nor punished for predicting them there.
    """
    unlabelled = ~labelled.bool()
    unlabelled[:, 0] = False
    trailing = [1] * (logits.dim() - 2)
    background_like = unlabelled.clone()
    background_like[:, 0] = True
    background = logits.masked_fill(
        ~background_like.view(*background_like.shape, *trailing), float("-inf")
    ).logsumexp(dim=1, keepdim=True)
    foreground_unlabelled = unlabelled[:, 1:]
    foreground = logits[:, 1:].masked_fill(
        foreground_unlabelled.reshape(*foreground_unlabelled.shape, *trailing), float("-inf")
    )
    return torch.cat([background, foreground], dim=1)


def partial_label_loss(logits: Tensor, target: Tensor, labelled: Tensor) -> Tensor:
    """Dice + cross-entropy where each sample counts only the classes it has labels for.

    Cross-entropy runs on :func:`merge_unlabelled` logits. The soft Dice of each
    foreground class is pooled over the samples that label it, as :func:`soft_dice_loss`
    pools over the batch (so a fully labelled batch gives exactly :func:`dice_ce_loss`),
    and averaged over the classes that some sample labels.
    """
    merged = merge_unlabelled(logits, labelled)
    cross_entropy = F.cross_entropy(merged, target.long())
    probabilities = merged.softmax(dim=1)[:, 1:]
    one_hot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1)[:, 1:].to(logits.dtype)
    dims = tuple(range(2, logits.dim()))
    weight = labelled[:, 1:].to(logits.dtype)  # (B, K - 1)
    overlap = ((probabilities * one_hot).sum(dims) * weight).sum(0)
    total = ((probabilities.sum(dims) + one_hot.sum(dims)) * weight).sum(0)
    dice = (2 * overlap + 1.0) / (total + 1.0)
    counted = weight.amax(dim=0)
    return 1 - (dice * counted).sum() / counted.sum().clamp_min(1.0) + cross_entropy
