"""A picture of one segmented case: slices of the image, its label map and the prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .case_volumes import LoadedCase


def write_overlay(loaded: LoadedCase, predicted: np.ndarray, path: Path, num_classes: int) -> Path:
    """Three axial slices through the labelled structures: image, label map, prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled_slices = np.flatnonzero(loaded.label.any(axis=(0, 1)))
    picks = labelled_slices if labelled_slices.size else np.arange(loaded.label.shape[2])
    slices = [int(picks[int(q * (len(picks) - 1))]) for q in (0.25, 0.5, 0.75)]
    figure, axes = plt.subplots(3, 3, figsize=(9, 9))
    for row, z in enumerate(slices):
        image = loaded.image[0, :, :, z].T
        for column, (title, labels) in enumerate(
            (("image", None), ("label", loaded.label), ("prediction", predicted))
        ):
            axis = axes[row, column]
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            if labels is not None:
                shown = np.ma.masked_equal(labels[:, :, z].T, 0)
                axis.imshow(shown, cmap="tab10", vmin=1, vmax=max(num_classes - 1, 2), alpha=0.5)
            axis.set_title(f"{title}, slice {z}", fontsize=9)
            axis.axis("off")
    figure.suptitle(f"{loaded.case.name}: label map and prediction")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
