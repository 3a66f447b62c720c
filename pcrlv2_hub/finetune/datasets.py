"""Labelled data for fine-tuning: every supported layout becomes three checked splits.

``--data`` may be

- a MedMNIST-style ``.npz`` with ``{train,val,test}_images`` and ``{train,val,test}_labels``
  (for segmentation ``{split}_masks``: label maps the size of the images);
- a ``.csv`` of volumes with the columns ``image,label,split`` (paths relative to the CSV),
  or a folder holding such a ``labels.csv``;
- a folder of image/mask volume pairs, ``{split}/images/NAME`` and ``{split}/masks/NAME``;
- a folder of 2D images, ``{split}/{class_name}/*.png`` (e.g. NIH ChestX-ray folders);
  class indices follow the sorted class-folder names;
- a LUNA16 folder (``subset0/`` ... ``subset9/`` and ``candidates_V2.csv``), for 3D
  classification: a crop around each nodule candidate (see :mod:`.luna16`).

``valid`` and ``validation`` are accepted as names of the ``val`` split. Whatever the
layout, images end up float32 ``(N, C, *spatial)`` in [0, 1] and targets int16 (label maps
are as large as the images): ``(N,)`` class indices or ``(N, *spatial)`` label maps. Data
that cannot be used raises :class:`DataError` saying what to fix, before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import readers
from .luna16 import Luna16Settings, is_luna16, read_luna16

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split in memory: images ``(N, C, *spatial)`` and their targets."""

    images: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> Split:
        return Split(self.images[indices], self.targets[indices])


@dataclass(frozen=True)
class Dataset:
    """The train/val/test splits of one task and the number of classes they use."""

    splits: dict[str, Split]
    num_classes: int
    source: str


def load_dataset(
    path: str | Path,
    spatial_dims: int,
    segmentation: bool,
    *,
    spacing: tuple[float, float, float] | None = None,
    volume_size: tuple[int, int, int] | None = None,
    luna16: Luna16Settings | None = None,
) -> Dataset:
    """Read ``path`` in whichever supported layout it is, and check it for the task.

    ``spacing`` and ``volume_size`` bring the volumes of a CSV table (real scans of any
    size) to one grid: resampled to ``spacing`` mm, then centre-cropped or padded. Given
    ``luna16`` settings, ``path`` must be a LUNA16 folder.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass the dataset's file or folder with --data.")
    if luna16 is not None and not is_luna16(path):
        raise DataError(
            f"{path} is not a LUNA16 folder: the luna16 protocol needs subset0/ ... subset9/ "
            "with SERIESUID.mhd files and candidates_V2.csv (or candidates.csv) beside them."
        )
    if is_luna16(path) and spatial_dims == 3 and not segmentation:
        raw = read_luna16(path, luna16 or Luna16Settings(spacing=spacing))
    elif path.suffix == ".npz":
        raw = readers.read_npz(path, "masks" if segmentation else "labels")
    elif path.suffix == ".csv" or (path / "labels.csv").is_file():
        table = path if path.suffix == ".csv" else path / "labels.csv"
        raw = readers.read_volume_table(table, spacing=spacing, volume_size=volume_size)
    elif path.is_dir() and segmentation:
        raw = readers.read_volume_pairs(path)
    elif path.is_dir() and spatial_dims == 2:
        raw = readers.read_image_folders(path)
    else:
        raise DataError(
            f"{path}: not a supported dataset for this task; use a .npz with "
            "{split}_images/{split}_labels, a .csv of volumes (image,label,split), or a "
            "folder laid out as described in `pcrlv2-hub finetune --help`."
        )
    return _checked(raw, path, spatial_dims, segmentation)


def _checked(
    raw: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, spatial_dims: int, segmentation: bool
) -> Dataset:
    missing = [s for s in SPLITS if s not in raw or len(raw[s][0]) == 0]
    if missing:
        raise DataError(
            f"{path}: the split(s) {', '.join(missing)} are missing or empty; fine-tuning "
            f"needs {', '.join(SPLITS)} (train to learn, val for early stopping, test to report)."
        )
    splits = {
        name: _checked_split(name, *raw[name], path, spatial_dims, segmentation) for name in SPLITS
    }
    channels = {s.images.shape[1] for s in splits.values()}
    if len(channels) > 1:
        raise DataError(f"{path}: the splits have different channel counts {sorted(channels)}.")
    num_classes = max(2, 1 + max(int(s.targets.max()) for s in splits.values()))
    if not segmentation:
        for name, split in splits.items():
            if np.unique(split.targets).size < 2:
                raise DataError(
                    f"{path}: the {name} split holds one class only; every split needs at "
                    "least two classes for AUC and early stopping to mean anything."
                )
    return Dataset(splits, num_classes, str(path))


def _checked_split(
    name: str,
    images: np.ndarray,
    targets: np.ndarray,
    path: Path,
    spatial_dims: int,
    segmentation: bool,
) -> Split:
    where = f"{path} ({name})"
    if images.ndim == spatial_dims + 1:
        images = images[:, None]  # no channel axis, as in MedMNIST
    if images.ndim != spatial_dims + 2:
        raise DataError(
            f"{where}: images of shape {images.shape}; expected (N, *spatial) or "
            f"(N, C, *spatial) with {spatial_dims} spatial axes."
        )
    if segmentation:
        if targets.shape != (images.shape[0], *images.shape[2:]):
            raise DataError(
                f"{where}: images {images.shape[2:]} and masks {targets.shape[1:]} differ in "
                f"size (or count: {images.shape[0]} vs {targets.shape[0]}); resample each mask "
                "onto its image's grid."
            )
    else:
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets[:, 0]  # MedMNIST stores labels as (N, 1)
        if targets.shape != (images.shape[0],):
            raise DataError(
                f"{where}: labels of shape {targets.shape} for {images.shape[0]} images; "
                "expected one class index per image, (N,) or (N, 1) (multi-label data is "
                "not supported)."
            )
    if (
        not np.issubdtype(targets.dtype, np.number)
        or (targets < 0).any()
        or (targets > np.iinfo(np.int16).max).any()
        or (targets != np.round(targets)).any()
    ):
        raise DataError(f"{where}: labels must be class indices 0, 1, 2, ... (below 32768).")
    return Split(to_unit_range(images), targets.astype(np.int16))


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """float32 images; integer images are divided by their type's maximum (uint8: 255)."""
    if np.issubdtype(images.dtype, np.integer):
        return (images / np.iinfo(images.dtype).max).astype(np.float32)
    return images.astype(np.float32, copy=False)
