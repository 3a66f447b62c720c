"""CT and MRI volumes in: find, read, resample and window them.

Reads NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mhd``/``.raw`` as LUNA16 ships,
``.mha``), NRRD, DICOM series folders (SimpleITK) and NumPy ``.npy``/``.npz``. Each
volume is resampled to 1 mm (linear), clipped to the CT window [-1000, 1000] HU and
scaled to [0, 1] as the authors did; MRI gets a percentile window instead. Training
decodes each volume once into a memory-mapped cache (``preparation.py``,
``volume_cache.py``). A DICOM folder holding several series gives its largest (the scan,
not a scout or a dose report), with a DataWarning naming the folder and the series left out.

Arrays are indexed (x, y, z), like the authors' (SimpleITK's index order; the NumPy
arrays SimpleITK returns are (z, y, x) and get transposed). ``.npy`` and ``.npz`` arrays
are taken as (x, y, z) and in HU for CT, with ``Preprocessing.array_spacing`` unless an
``.npz`` holds a ``spacing`` array.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DataError, InvalidInputError
from .dicom import read_dicom_series
from .sources import DataSource, expand_source
from .volume_checks import (
    check_geometry,
    check_mhd_header,
    check_nifti_complete,
    check_resampled_size,
)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".npy", ".npz")
DICOM_SUFFIXES = (".dcm", ".ima")


@dataclass(frozen=True)
class Preprocessing:
    """How raw voxels become training voxels in [0, 1]."""

    spacing: tuple[float, float, float] | float | None = (1.0, 1.0, 1.0)  # mm; None: as is
    modality: str = "ct"  # "ct": fixed HU window; "mri": percentile window per volume
    window: tuple[float, float] = (-1000.0, 1000.0)  # HU, CT only
    percentiles: tuple[float, float] = (0.5, 99.5)  # MRI only
    array_spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm, for .npy/.npz

    def __post_init__(self) -> None:
        if isinstance(self.spacing, int | float):  # one number: isotropic
            object.__setattr__(self, "spacing", (float(self.spacing),) * 3)
        if self.modality not in ("ct", "mri"):
            raise InvalidInputError(f"modality must be 'ct' or 'mri', not {self.modality!r}.")
        if self.window[0] >= self.window[1] or self.percentiles[0] >= self.percentiles[1]:
            raise InvalidInputError("window and percentiles must be (low, high) with low < high.")
        if self.spacing is not None and min(self.spacing) <= 0:
            raise InvalidInputError(f"spacing must be positive millimetres, not {self.spacing}.")


def find_volumes(source: DataSource) -> list[Path]:
    """Volume files and DICOM series folders in a folder, glob, list file or sequence of them."""
    return expand_source(source, _is_volume, "volumes (.nii, .nii.gz, .mhd, .npy, .npz, DICOM)")


def read_volume(
    path: str | os.PathLike, preprocessing: Preprocessing = Preprocessing()
) -> np.ndarray:
    """One volume as float32 in [0, 1], (x, y, z), resampled and windowed; no cache.

    Whatever is wrong with the file (truncated, corrupt, an implausible header) raises
    DataError: the readers below (SimpleITK, gzip, NumPy, zipfile) fail in many ways on
    damaged bytes, and a run over a large archive must skip such a volume, not stop.
    """
    image = read_image(path, preprocessing, resampled=True)
    return window(sitk.GetArrayFromImage(image).transpose(2, 1, 0), preprocessing)


def read_image(
    path: str | os.PathLike, preprocessing: Preprocessing, *, resampled: bool
) -> sitk.Image:
    """One volume as a float32 SimpleITK image with its geometry, onto
    ``preprocessing.spacing`` if ``resampled``; every reader failure is a DataError."""
    try:
        image = _read_image(Path(path), preprocessing)
        return resample(image, preprocessing.spacing) if resampled else image
    except DataError:
        raise
    except MemoryError as error:
        raise DataError("it is too large to read into memory") from error
    except Exception as error:  # any failure of a third-party reader on damaged bytes
        raise DataError(f"it cannot be read ({type(error).__name__}: {_reason(error)})") from error


def _is_volume(path: Path) -> bool:
    if path.is_dir():
        return _is_dicom_folder(path)
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _is_dicom_folder(folder: Path) -> bool:
    """A folder holding DICOM files (by extension, or by the 'DICM' marker at byte 128)."""
    for entry in os.scandir(folder):
        if not entry.is_file():
            continue
        name = entry.name.lower()
        if name.endswith(DICOM_SUFFIXES):
            return True
        if "." not in name:
            with open(entry.path, "rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    return True
    return False


def _read_image(path: Path, preprocessing: Preprocessing) -> sitk.Image:
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_series(path)
    if name.endswith((".npy", ".npz")):
        return _read_array(path, preprocessing.array_spacing)
    if name.endswith((".nii", ".nii.gz")):
        check_nifti_complete(path)
    if name.endswith(".mhd"):
        check_mhd_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetDimension() != 3:
        raise DataError(f"it is a {reader.GetDimension()}D image, not a 3D volume")
    check_geometry(reader.GetSpacing(), reader.GetDirection())
    reader.SetOutputPixelType(sitk.sitkFloat32)
    return reader.Execute()


def _read_array(path: Path, default_spacing: tuple[float, float, float]) -> sitk.Image:
    spacing = default_spacing
    if path.name.lower().endswith(".npz"):
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        if "spacing" in arrays:
            spacing = tuple(float(s) for s in arrays.pop("spacing"))
        if len(arrays) != 1 and not {"image", "volume"} & set(arrays):
            raise DataError(
                f"it holds several arrays {sorted(arrays)}; name the volume 'image' (and its "
                f"spacing 'spacing')"
            )
        voxels = arrays.get("image", arrays.get("volume", next(iter(arrays.values()))))
    else:
        voxels = np.load(path)
    voxels = np.squeeze(voxels)
    if voxels.ndim != 3 or len(spacing) != 3:
        raise DataError(f"it holds an array of shape {voxels.shape}, not one 3D volume")
    check_geometry(spacing)
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels.transpose(2, 1, 0), np.float32))
    image.SetSpacing(spacing)
    return image


def resample(image: sitk.Image, spacing: tuple[float, float, float] | None) -> sitk.Image:
    """Linear resampling onto ``spacing``, keeping every sample inside the original extent."""
    original = np.array(image.GetSpacing())
    if spacing is None or np.allclose(original, spacing):
        return image
    extent = (np.array(image.GetSize()) - 1) * original
    size = (np.floor(extent / np.array(spacing) + 1e-6).astype(int) + 1).tolist()
    check_resampled_size(tuple(original), extent, spacing, size)
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        spacing,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def window(voxels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """Intensities to [0, 1]: the CT window, or the MRI percentiles of this volume."""
    if preprocessing.modality == "ct":
        low, high = preprocessing.window
    else:
        low, high = (float(v) for v in np.percentile(voxels, preprocessing.percentiles))
        high = max(high, low + 1e-6)  # floats: a NumPy float64 would make the volume float64
    scaled = (voxels.astype(np.float32) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."
