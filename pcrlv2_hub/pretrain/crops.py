"""The paper's sub-crops of one volume, cut on the fly: two global views and their locals.

Globals: two boxes at random scales (by default 96x96x64, 96x96x96, 112x112x64 or
64x64x32 voxels) placed uniformly in the volume and kept only when their IoU exceeds 0.3
(and, with ``min_tissue``, when each holds that share of tissue: ``tissue.py``), each
resized to 64x64x32. Locals: six boxes at random scales (32x32x16, 16^3, 32^3, 8^3)
inside the union of the two global boxes, resized to 16^3. A box larger than the volume
along an axis covers that whole axis, and the rest is zero (air, after CT windowing).

The authors cut these in a preprocessing script with per-voxel Python loops and saved
them as files; here pairs of candidate boxes are drawn many at a time, and crops are
array slices resized with torch's trilinear interpolation, so nothing touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .tissue import TissueMap
from .views import ViewConfig3D


class Volume(Protocol):
    """A (x, y, z) array or anything sliced like one (a memory-mapped cache entry)."""

    shape: tuple[int, ...]

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray: ...


@dataclass(frozen=True)
class SubCrops:
    """Clean crops of one volume, and where they came from (for checks and pictures)."""

    globals: Tensor  # (2, 1, *global_size), float32, the volume's values ([0, 1])
    locals: Tensor  # (num_locals, 1, *local_size)
    global_boxes: np.ndarray  # (2, 2, 3) int: [start, stop) per axis, in volume voxels
    local_boxes: np.ndarray  # (num_locals, 2, 3)


class SubCropSampler:
    """Draws :class:`SubCrops` from a volume with a given ``numpy.random.Generator``.

    Candidate global pairs are drawn ``candidates`` at a time and the first with IoU >
    ``config.min_iou`` is kept, which is the authors' draw-until-accepted loop. If none
    passes in ``max_rounds`` rounds (possible only when the scales can hardly overlap
    that much), both globals use the first candidate box: IoU 1, still two views, as
    the corruptions differ.
    """

    def __init__(
        self, config: ViewConfig3D | None = None, candidates: int = 256, max_rounds: int = 64
    ):
        self.config = config = config or ViewConfig3D()
        self.candidates = candidates
        self.max_rounds = max_rounds
        self._global_scales = np.array(config.global_scales)
        self._tissue_maps: dict[str, TissueMap] = {}
        self._local_scales = np.array(config.local_scales)

    def __call__(self, volume: Volume, rng: np.random.Generator) -> SubCrops:
        tissue = self._tissue_map(volume) if self.config.min_tissue > 0 else None
        global_boxes, local_boxes = self.boxes(volume.shape[:3], rng, tissue)
        return SubCrops(
            globals=torch.stack([_crop(volume, b, self.config.global_size) for b in global_boxes]),
            locals=torch.stack([_crop(volume, b, self.config.local_size) for b in local_boxes]),
            global_boxes=global_boxes,
            local_boxes=local_boxes,
        )

    def boxes(
        self, shape: tuple[int, ...], rng: np.random.Generator, tissue: TissueMap | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where to cut in a volume of ``shape``: global boxes (2, 2, 3), locals (L, 2, 3).

        With ``tissue`` (the volume's map), global crops must hold ``min_tissue`` of tissue.
        """
        shape = np.array(shape)
        global_boxes = self._global_boxes(shape, rng, tissue)
        union_low = np.clip(global_boxes[:, 0].min(axis=0), 0, shape)
        union_high = np.clip(global_boxes[:, 1].max(axis=0), 0, shape)
        scales = self._local_scales[
            rng.integers(len(self._local_scales), size=self.config.num_locals)
        ]
        starts = _random_starts(union_low, union_high, scales, rng)
        return global_boxes, np.stack([starts, starts + scales], axis=1)

    def _global_boxes(
        self, shape: np.ndarray, rng: np.random.Generator, tissue: TissueMap | None
    ) -> np.ndarray:
        scales = self._global_scales
        low, high = (tissue.low, tissue.high) if tissue is not None else (0, shape)
        for _ in range(self.max_rounds):
            sizes = scales[rng.integers(len(scales), size=(self.candidates, 2))]
            starts = _random_starts(low, high, sizes, rng)
            pairs = np.stack([starts, starts + sizes], axis=2)  # (candidates, 2, 2, 3)
            good = box_iou(pairs[:, 0], pairs[:, 1]) > self.config.min_iou
            if tissue is not None:
                good &= (tissue.share(pairs) >= self.config.min_tissue).all(axis=1)
            accepted = np.flatnonzero(good)
            if accepted.size:
                return pairs[accepted[0]]
        if tissue is not None:  # none had enough tissue: the box with the most, twice
            boxes = pairs.reshape(-1, 2, 3)
            return boxes[[np.argmax(tissue.share(boxes))] * 2]
        return pairs[0, [0, 0]]

    def _tissue_map(self, volume: Volume) -> TissueMap:
        """The volume's tissue map, computed once per volume (by cache path, else object)."""
        key = str(getattr(volume, "path", id(volume)))
        if key not in self._tissue_maps:
            self._tissue_maps[key] = TissueMap(volume, self.config.tissue_level)
        return self._tissue_maps[key]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``(..., 2, 3)`` given as [start, stop) per axis."""
    overlap = np.minimum(a[..., 1, :], b[..., 1, :]) - np.maximum(a[..., 0, :], b[..., 0, :])
    intersection = np.clip(overlap, 0, None).prod(axis=-1)
    volume_a = (a[..., 1, :] - a[..., 0, :]).prod(axis=-1)
    volume_b = (b[..., 1, :] - b[..., 0, :]).prod(axis=-1)
    return intersection / (volume_a + volume_b - intersection)


def _random_starts(low, high, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform box starts in [low, high - size]; a box larger than the range covers it."""
    room = high - low - sizes
    first = np.where(room >= 0, low, high - sizes)
    return first + rng.integers(0, np.abs(room) + 1)


def _crop(volume: Volume, box: np.ndarray, size: tuple[int, int, int]) -> Tensor:
    """The box's voxels (zero outside the volume) resized to ``size``: ``(1, *size)``."""
    start, stop = box
    low = np.clip(start, 0, volume.shape[:3])
    high = np.clip(stop, low, volume.shape[:3])
    # a view of the (memory-mapped) voxels, which torch turns into float32 in one pass, 5x
    # faster than a numpy copy of the strided float16 region; DLPack takes read-only arrays
    inside = torch.from_dlpack(volume[tuple(map(slice, low, high))])
    before, after = low - start, stop - high  # F.pad lists the last axis first
    padding = [int(n) for axis in (2, 1, 0) for n in (before[axis], after[axis])]
    crop = inside.float()[None, None]
    if any(padding):
        crop = F.pad(crop, padding)
    if crop.shape[2:] != tuple(size):
        crop = F.interpolate(crop, size=size, mode="trilinear", align_corners=False)
    return crop[0]
