"""Dice and 95 % Hausdorff distance per case and class, computed by MONAI.

What segmentation papers report, from the library that most of them use, so our
figures can be compared with theirs. A class the case does not label (partial labels)
or that is absent from both the label map and the prediction has no value (None), and
is left out of the means; one predicted where the case has none scores Dice 0. The 95 %
Hausdorff distance is in millimetres (None where either side is empty).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot


def case_metrics(
    predicted: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    spacing: Sequence[float],
    labelled: Sequence[int] | None = None,
) -> dict[str, list[float | None]]:
    """Dice and HD95 (mm) of each foreground class 1..K-1 for one (x, y, z) label map."""
    as_one_hot = [
        one_hot(torch.as_tensor(np.asarray(m, np.int64))[None, None], num_classes)
        for m in (predicted, target)
    ]
    dice = compute_dice(*as_one_hot, include_background=False, ignore_empty=False)[0]
    with warnings.catch_warnings():  # an empty side gives inf/nan, reported as None below
        warnings.filterwarnings("ignore", message=".* is all 0, this may result in nan/inf")
        warnings.filterwarnings(
            "ignore", message=".*always_return_as_numpy", category=FutureWarning
        )
        hd95 = compute_hausdorff_distance(
            *as_one_hot, include_background=False, percentile=95, spacing=list(spacing)
        )[0]
    counted = set(range(1, num_classes)) if labelled is None else set(labelled)
    present = [
        bool(as_one_hot[0][0, k].any() or as_one_hot[1][0, k].any()) for k in range(num_classes)
    ]
    result: dict[str, list[float | None]] = {"dice": [], "hd95_mm": []}
    for k in range(1, num_classes):
        keep = k in counted and present[k]
        result["dice"].append(_finite(dice[k - 1]) if keep else None)
        result["hd95_mm"].append(_finite(hd95[k - 1]) if keep else None)
    return result


def region_metrics(
    predicted: np.ndarray,
    target: np.ndarray,
    regions: dict[str, tuple[int, ...]],
    spacing: Sequence[float],
) -> dict[str, list[float | None]]:
    """Dice and HD95 of each region (a union of label values, e.g. BraTS's tumour core
    = labels 1 and 4), in the order of ``regions``."""
    result: dict[str, list[float | None]] = {"dice": [], "hd95_mm": []}
    for values in regions.values():
        binary = [np.isin(m, values).astype(np.int64) for m in (predicted, target)]
        scored = case_metrics(*binary, 2, spacing)
        result["dice"] += scored["dice"]
        result["hd95_mm"] += scored["hd95_mm"]
    return result


def summarise(per_case: Sequence[dict[str, list[float | None]]]) -> dict[str, Any]:
    """Mean and standard deviation per class, and the mean over classes, of each metric."""
    summary: dict[str, Any] = {}
    for metric in ("dice", "hd95_mm"):
        columns = list(zip(*(case[metric] for case in per_case), strict=True))
        per_class = [[v for v in column if v is not None] for column in columns]
        means = [float(np.mean(v)) if v else None for v in per_class]
        summary[metric] = {
            "mean_per_class": means,
            "std_per_class": [float(np.std(v)) if v else None for v in per_class],
            "mean": _mean([m for m in means if m is not None]),
        }
    return summary


def _finite(value: torch.Tensor) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
