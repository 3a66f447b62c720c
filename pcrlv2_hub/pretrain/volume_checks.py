"""What makes a volume file unusable, found before it is read or resampled.

A big archive holds files that are complete but wrong: headers whose spacing is not a
number, whose orientation is not a rotation, or which ask for more voxels than a machine
holds. Readers fail on them in the worst ways (ITK never returns from an SVD of an
infinite matrix, MetaIO crashes the process on ``NDims = -1``, ITK reads a truncated
NIfTI as zeros), so each is refused here with a DataError that says why, and the run
skips the file.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DataError

MAX_RESAMPLED_VOXELS = 1024**3
MAX_EXTENT_MM = 2500
"""A volume that resampling would make larger than 1024^3 voxels (4 GiB of float32), or
longer than 2.5 m along an axis, is skipped: its header's spacing is almost certainly
wrong (a 50 mm spacing asking for 3200^3 voxels)."""


def check_geometry(spacing: tuple[float, ...], direction: tuple[float, ...] | None = None) -> None:
    """Refuse a header whose geometry is impossible: ITK would hang or fail on it later
    (an infinite orientation matrix sends it into an endless SVD)."""
    spacing = np.array(spacing, dtype=float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise DataError(f"its header spacing {tuple(spacing)} mm is not positive and finite")
    if direction is None:
        return
    direction = np.array(direction).reshape(3, 3)
    if not (
        np.isfinite(direction).all() and np.allclose(direction.T @ direction, np.eye(3), atol=1e-3)
    ):
        raise DataError(f"its orientation matrix {direction.ravel().tolist()} is not a rotation")


def check_resampled_size(
    original: tuple[float, ...], extent: np.ndarray, spacing: tuple[float, ...], size: list[int]
) -> None:
    """Refuse a resampling to ``size`` voxels that no real scan needs (see the limits)."""
    if extent.max() > MAX_EXTENT_MM:
        raise DataError(
            f"its header spacing {original} mm makes it {extent.max():.0f} mm long, more "
            f"than the {MAX_EXTENT_MM} mm any body scan spans"
        )
    if math.prod(size) > MAX_RESAMPLED_VOXELS:
        raise DataError(
            f"resampled to {spacing} mm it would have {size} voxels, more than the limit of "
            f"{MAX_RESAMPLED_VOXELS:.2e}; is its header spacing {original} mm right?"
        )


def check_mhd_header(path: Path) -> None:
    """MetaIO crashes the process on some impossible headers (``NDims = -1``): refuse them."""
    fields = {}
    for line in path.read_bytes()[:65536].decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.split()
    try:
        ndims = int(fields.get("NDims", ["3"])[0])
        sizes = [int(v) for v in fields.get("DimSize", [])]
    except (ValueError, IndexError) as error:
        raise DataError(
            f"its MetaImage header has a malformed NDims or DimSize ({error})"
        ) from error
    if not 2 <= ndims <= 4 or len(sizes) != ndims or min(sizes) < 1:
        raise DataError(f"its MetaImage header says NDims {ndims} with DimSize {sizes}")


def check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without complaint (zero-filled voxels): refuse it here."""
    if path.name.lower().endswith(".gz"):
        with gzip.open(path) as stream:  # EOFError when the compressed stream is cut short
            payload = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 24), b""))
    else:
        payload = path.stat().st_size
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    header = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    dims = [int(header[f"dim[{i}]"]) for i in range(1, int(header["dim[0]"]) + 1)]
    needed = int(float(header["vox_offset"])) + math.prod(dims) * int(header["bitpix"]) // 8
    if payload < needed:
        raise DataError(f"truncated: {payload} bytes where its header needs {needed}")
