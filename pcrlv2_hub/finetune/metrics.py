"""Evaluation metrics of the fine-tuning tasks: ROC AUC, accuracy and Dice per class.

All functions take NumPy arrays and return plain floats (NaN where a metric is undefined,
e.g. an AUC on a split that holds one class only), so results serialise straight to JSON.
"""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2)[inverse]


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, from ranks (the Mann-Whitney U statistic).

    The AUC is the probability that a random positive scores higher than a random negative,
    ties counting one half; with ``R`` the sum of the positives' ranks among all scores,
    ``AUC = (R - P(P+1)/2) / (P N)`` for ``P`` positives and ``N`` negatives. This equals the
    trapezoidal area under the ROC curve and needs one sort, not a threshold sweep.
    NaN when one of the two classes is absent.
    """
    positive = np.asarray(positive, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_positive = int(positive.sum())
    n_negative = positive.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    rank_sum = average_ranks(scores)[positive].sum()
    return float((rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC AUC of class probabilities ``(N, K)`` against class indices ``(N,)``.

    Two classes: the binary AUC of class 1's probability. More: the one-vs-rest AUC of each
    class averaged with equal weights (macro), over the classes present in ``labels``.
    """
    labels = np.asarray(labels).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[1] == 2:
        return binary_auc(labels == 1, probabilities[:, 1])
    per_class = [
        binary_auc(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])
    ]
    defined = [value for value in per_class if not np.isnan(value)]
    return float(np.mean(defined)) if defined else float("nan")


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Fraction of samples whose most probable class is the true one."""
    labels = np.asarray(labels).ravel()
    return float(np.mean(np.asarray(probabilities).argmax(axis=1) == labels))


def dice_per_class(predicted: np.ndarray, target: np.ndarray, num_classes: int) -> list[float]:
    """Dice ``2|P & T| / (|P| + |T|)`` of each class over all voxels given (dataset-level).

    ``predicted`` and ``target`` are label maps of one shape. A class absent from both gets
    NaN: there is nothing to overlap, so neither 0 nor 1 would be honest.
    """
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    target = np.asarray(target, dtype=np.int64).ravel()
    confusion = np.bincount(target * num_classes + predicted, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    overlap = np.diag(confusion)
    total = confusion.sum(axis=0) + confusion.sum(axis=1)
    return [
        2 * o / t if t else float("nan")
        for o, t in zip(overlap.tolist(), total.tolist(), strict=True)
    ]
