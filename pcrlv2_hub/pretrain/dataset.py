"""What the training loop consumes: datasets of clean views, and their corruption into a ViewBatch.

A dataset item is a pure function of ``(seed, epoch, index)``: its random generator is
seeded from those three numbers, so a run gives the same crops whatever the number of
DataLoader workers or of distributed processes. Call ``set_epoch`` each epoch, as with
``DistributedSampler``. Corruptions run afterwards, batched on the training device
(:func:`corrupt_batch`), driven by a ``torch.Generator`` the loop owns and checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InvalidInputError
from .corruptions import corrupt_views_3d
from .crops import SubCropSampler
from .views import ViewBatch, ViewConfig2D, ViewConfig3D

if TYPE_CHECKING:
    from .views2d import ImageViewSampler

# views2d (torchvision, PIL) is imported where 2D work starts: 3D runs have no use for it.


class _SeededItems(Dataset):
    """``items_per_epoch`` items per epoch, item ``i`` drawn from a generator seeded by it
    and made by ``sampler`` from source ``i % len(sources)``."""

    def __init__(self, sources: Sequence, sampler: Any, items_per_epoch: int, seed: int = 0):
        if not sources:
            raise InvalidInputError("a pretraining dataset needs at least one volume or image.")
        if items_per_epoch < 1:
            raise InvalidInputError(f"items_per_epoch must be positive, not {items_per_epoch}.")
        self.sources = sources
        self.sampler = sampler
        self.items_per_epoch = items_per_epoch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the items of ``epoch`` (new crops for the same indices)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.items_per_epoch

    def _source_and_rng(self, index: int) -> tuple[object, np.random.Generator]:
        """Sources are used in turn, so each is seen equally often per epoch."""
        if not 0 <= index < self.items_per_epoch:
            raise IndexError(f"item {index} out of range for {self.items_per_epoch} items")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return self.sources[index % len(self.sources)], rng


class SubCropDataset(_SeededItems):
    """Clean 3D sub-crops: item ``i`` is ``{"globals": (2, 1, *G), "locals": (L, 1, *Ls)}``.

    Float32 in [0, 1] with the default ``G`` = (64, 64, 32), ``L`` = 6, ``Ls`` = 16^3;
    the sources are (x, y, z) arrays or
    :class:`~pcrlv2_hub.pretrain.volume_cache.CachedVolume` entries.
    """

    sampler: SubCropSampler

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        volume, rng = self._source_and_rng(index)
        crops = self.sampler(volume, rng)
        return {"globals": crops.globals, "locals": crops.locals}


class ImageViewDataset(_SeededItems):
    """Clean 2D views: item ``i`` is ``{"globals": (2, 3, S, S), "locals": (L, 3, s, s)}``.

    Float32 in [0, 1], S = 224, s = 96 and L = 6 by default: random resized crops of the
    source image (a path) with their rotation and flip (the spatial part of the view).
    """

    sampler: ImageViewSampler

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        from .views2d import read_image

        path, rng = self._source_and_rng(index)
        return self.sampler(read_image(path), rng)


def corrupt_batch(
    batch: dict[str, Tensor], generator: torch.Generator, config: ViewConfig3D | ViewConfig2D
) -> ViewBatch:
    """Corrupt a collated batch of clean views on ``generator.device`` (data moved there).

    ``batch["globals"]``: (B, 2, C, *G), ``batch["locals"]``: (B, L, C, *Ls), as the
    datasets above collate. The recipe (``ViewConfig3D`` or ``ViewConfig2D``) picks the
    3D or 2D corruptions.
    """
    globals_, locals_ = batch["globals"], batch["locals"]
    dimensions = 3 if isinstance(config, ViewConfig3D) else 2
    if globals_.ndim != dimensions + 3 or locals_.ndim != dimensions + 3:
        raise InvalidInputError(
            f"a {dimensions}D recipe needs batches of shape (B, views, C, {dimensions} sizes); "
            f"got globals {tuple(globals_.shape)} and locals {tuple(locals_.shape)}."
        )
    if dimensions == 3:
        return corrupt_views_3d(globals_, locals_, generator, config)
    from .views2d import corrupt_views_2d

    return corrupt_views_2d(globals_, locals_, generator, config)
