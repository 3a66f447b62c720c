"""How much of a crop is tissue rather than air: the filter that keeps crops on the body.

A CT volume is mostly air around the patient (OpenKBP's 128^3 grids hold the head in
about a fifth of their voxels; scanner padding is air too), and a crop of air teaches
restoration nothing but "output zero". The authors' LUNA16 preprocessing kept only crops
with enough tissue; here a global crop pair is accepted only when each crop's share of
voxels above ``level`` reaches ``min_share``. Shares are read from a summed-volume table
of a coarse tissue map (one voxel of each block of ``BLOCK``^3), so each of the hundreds
of candidate boxes costs eight lookups; box edges are rounded to whole blocks.
"""

from __future__ import annotations

import numpy as np

BLOCK = 4


class TissueMap:
    """Tissue shares of boxes in one volume, from its coarse summed-volume table."""

    def __init__(self, volume, level: float):
        # one voxel per block stands for the block: 1/64 of the reads, and shares of boxes
        # of thousands of voxels barely move
        coarse = np.asarray(volume[::BLOCK, ::BLOCK, ::BLOCK]) > level
        self.cells = np.array(coarse.shape)
        found = np.argwhere(coarse)
        shape = np.array(volume.shape[:3])
        self.low = found.min(axis=0) * BLOCK if len(found) else np.zeros(3, int)
        self.high = np.minimum((found.max(axis=0) + 1) * BLOCK, shape) if len(found) else shape
        """The bounding box of the tissue: where candidate crops are placed."""
        self.table = np.zeros(self.cells + 1)
        self.table[1:, 1:, 1:] = coarse.cumsum(0).cumsum(1).cumsum(2)

    def share(self, boxes: np.ndarray) -> np.ndarray:
        """Tissue share of each box ``(..., 2, 3)`` ([start, stop) in voxels); outside is air."""
        rounded_low = np.round(boxes[..., 0, :] / BLOCK).astype(int)
        rounded_high = np.maximum(np.round(boxes[..., 1, :] / BLOCK).astype(int), rounded_low + 1)
        low = np.clip(rounded_low, 0, self.cells)
        high = np.maximum(np.clip(rounded_high, 0, self.cells), low)
        total = 0.0
        for corner in range(8):
            pick = [(corner >> axis) & 1 for axis in range(3)]
            index = tuple(np.where(pick[a], high[..., a], low[..., a]) for a in range(3))
            sign = (-1) ** (3 - sum(pick))
            total = total + sign * self.table[index]
        return total / np.prod(rounded_high - rounded_low, axis=-1)
