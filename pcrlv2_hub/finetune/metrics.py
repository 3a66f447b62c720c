"""Evaluation metrics of the fine-tuning tasks: ROC AUC (MONAI), accuracy and Dice per class.

All functions take NumPy arrays and return plain floats (NaN where a metric is undefined,
e.g. an AUC on a split that holds one class only), so results serialise straight to JSON.
"""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC AUC (MONAI's) of class probabilities ``(N, K)`` against class indices ``(N,)``.

    Two classes: the binary AUC of class 1's probability, ties counting one half. More: the
    one-vs-rest AUC of each class averaged with equal weights (macro), over the classes
    present in ``labels``. NaN when fewer than two classes are present.
    """
    import torch
    from monai.metrics import compute_roc_auc

    labels = np.asarray(labels, dtype=np.int64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    present = np.unique(labels)
    if present.size < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        scores, targets = probabilities[:, 1], labels
    else:
        scores, targets = (
            probabilities[:, present],
            np.eye(probabilities.shape[1])[labels][:, present],
        )
    return float(compute_roc_auc(torch.as_tensor(scores), torch.as_tensor(targets), "macro"))


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
