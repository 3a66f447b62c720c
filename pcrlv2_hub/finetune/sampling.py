"""``--label-fraction``: a seeded, class-balanced subset of the training labels.

Label-efficiency curves compare models trained on 5 %, 10 %, 25 % ... of the labels; the
comparison is fair only if every model sees the same subset at a given seed and every
subset keeps the class proportions of the full set. The subset depends only on the labels,
the fraction and the seed, so pretrained and randomly initialised runs are paired.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError


def stratified_subset(strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``round(fraction * n_k)`` samples of each stratum k (at least one).

    ``strata`` are the class labels; for segmentation pass one value for all samples.
    """
    if not 0 < fraction <= 1:
        raise InvalidInputError(f"label fraction {fraction} must be in (0, 1], e.g. 0.1 for 10 %.")
    strata = np.asarray(strata).ravel()
    rng = np.random.default_rng(seed)
    chosen = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        keep = max(1, round(fraction * members.size))
        chosen.append(rng.choice(members, size=keep, replace=False))
    return np.sort(np.concatenate(chosen))
