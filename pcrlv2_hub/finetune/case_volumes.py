"""A case's files in: channels and label on one resampled grid, and predictions back out.

Every channel goes through the readers and preprocessing of pretraining (NIfTI,
MetaImage, NRRD, DICOM series; resampling to a target spacing, the CT window or MRI
percentiles), so fine-tuning sees voxels as the pretrained encoder saw them. The label is
resampled with nearest neighbour onto the image's resampled grid, and a prediction made
on that grid is resampled back onto the original one, so that it overlays the input
voxel for voxel (size, spacing, origin and direction as the input's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DataError
from ..pretrain.volumes import Preprocessing, read_image, resample, window
from .cases import Case

_TOLERANCE = 1e-3  # mm, and direction cosines


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid lies in the patient: what a label map must share with its image."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def matches(self, other: Geometry) -> bool:
        pairs = [(self.spacing, other.spacing), (self.origin, other.origin)]
        pairs.append((self.direction, other.direction))
        return self.size == other.size and all(np.allclose(a, b, atol=_TOLERANCE) for a, b in pairs)

    def describe(self) -> str:
        spacing = " x ".join(f"{s:g}" for s in self.spacing)
        origin = ", ".join(f"{o:.1f}" for o in self.origin)
        return f"{' x '.join(map(str, self.size))} voxels of {spacing} mm at ({origin})"


@dataclass(frozen=True)
class LoadedCase:
    """A case ready for patches and sliding windows, arrays indexed (x, y, z)."""

    case: Case
    image: np.ndarray
    """(channels, x, y, z) float32 in [0, 1]."""
    label: np.ndarray | None
    """(x, y, z) int64 class values, on the image's grid."""
    grid: Geometry
    """The resampled grid the arrays are on."""
    original: Geometry
    """The input's grid, which predictions are written back onto."""


def load_case(case: Case, preprocessing: Preprocessing, num_classes: int) -> LoadedCase:
    """Read, check and resample one case; DataError naming the case for anything wrong."""
    raw = [_read(path, case, preprocessing, resampled=False) for path in case.images]
    original = Geometry.of(raw[0])
    for path, channel in zip(case.images[1:], raw[1:], strict=True):
        if not Geometry.of(channel).matches(original):
            raise DataError(
                f"case {case.name}: the channel {path.name} ({Geometry.of(channel).describe()}) "
                f"is not on the grid of {case.images[0].name} ({original.describe()}); "
                "register the sequences to one grid first."
            )
    resampled = [resample(channel, preprocessing.spacing) for channel in raw]
    image = np.stack([window(_array(channel), preprocessing) for channel in resampled])
    label = None
    if case.label is not None:
        label = _read_label(case, preprocessing, original, resampled[0], num_classes)
    return LoadedCase(case, image, label, Geometry.of(resampled[0]), original)


def restore_geometry(labels: np.ndarray, loaded: LoadedCase) -> sitk.Image:
    """A label map predicted on ``loaded``'s resampled grid, on the input's original grid."""
    wide = labels.max(initial=0) > 255  # TotalSegmentator has 117 classes, others more
    dtype, pixel = (np.uint16, sitk.sitkUInt16) if wide else (np.uint8, sitk.sitkUInt8)
    on_grid = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0), dtype))
    grid, original = loaded.grid, loaded.original
    on_grid.SetSpacing(grid.spacing)
    on_grid.SetOrigin(grid.origin)
    on_grid.SetDirection(grid.direction)
    return sitk.Resample(
        on_grid, original.size, sitk.Transform(), sitk.sitkNearestNeighbor,
        original.origin, original.spacing, original.direction, 0, pixel,
    )  # fmt: skip


def _read_label(
    case: Case,
    preprocessing: Preprocessing,
    original: Geometry,
    grid: sitk.Image,
    num_classes: int,
) -> np.ndarray:
    assert case.label is not None
    label = _read(case.label, case, preprocessing, resampled=False)
    if not Geometry.of(label).matches(original):
        raise DataError(
            f"case {case.name}: the label map {case.label.name} ({Geometry.of(label).describe()}) "
            f"is not on the image's grid ({original.describe()}); they must be the same size, "
            "spacing, origin and direction."
        )
    voxels = _array(label)
    values = np.unique(voxels)
    unknown = [v for v in values.tolist() if v != int(v) or not 0 <= v < num_classes]
    if unknown:
        raise DataError(
            f"case {case.name}: the label map {case.label.name} holds values "
            f"{unknown[:8]} outside the {num_classes} classes 0-{num_classes - 1}; fix the "
            "map or the dataset's 'labels'."
        )
    if case.labelled is not None:
        beyond = sorted({int(v) for v in values if v} - set(case.labelled))
        if beyond or any(c >= num_classes for c in case.labelled):
            raise DataError(
                f"case {case.name}: it says it labels the classes {list(case.labelled)}, but "
                f"its label map {case.label.name} holds {beyond or 'those'} "
                f"{'too' if beyond else f'beyond the {num_classes} classes'}; list every "
                "class the map contains, each below the number of classes."
            )
    if values.tolist() == [0] and case.labelled != ():
        raise DataError(
            f"case {case.name}: the label map {case.label.name} is empty (background only); "
            'if nothing was contoured in it, say so with "labelled": [], else fix the file.'
        )
    on_grid = sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    return _array(on_grid).astype(np.int64)


def _read(path: Path, case: Case, preprocessing: Preprocessing, *, resampled: bool) -> sitk.Image:
    try:
        return read_image(path, preprocessing, resampled=resampled)
    except DataError as error:
        raise DataError(f"case {case.name}: {path} cannot be used: {error}") from error


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)
