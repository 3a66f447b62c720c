"""DICOM series folders, read by GDCM in a short-lived child process.

GDCM keeps memory it allocated for a damaged header: the fuzz campaign
(``benchmarks/fuzz``) found single flipped bits that leave 0.7 to 5.5 GB held after
reading one 24 x 24 x 12 series, for good, in the reading process. A child process
gives all of it back when it ends, and a crash in it costs that folder only, so every
series is read there, forked from a fork server that has this module loaded.
"""

from __future__ import annotations

import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import DataError, DataWarning
from .volume_checks import check_geometry


def read_dicom_series(folder: Path) -> sitk.Image:
    """The series with the most slices (the scan, not a scout or a dose report).

    A folder holding several series gets a DataWarning saying which were left out.
    """
    try:
        with ProcessPoolExecutor(1, _context()) as pool:
            voxels, geometry, sizes = pool.submit(_read_largest_series, str(folder)).result()
    except BrokenProcessPool as error:
        raise DataError("reading its DICOM series crashed the reading process") from error
    if len(sizes) > 1:
        warnings.warn(
            f"it holds {len(sizes)} DICOM series; using the largest ({sizes[0]} slices), "
            f"leaving out {len(sizes) - 1} with {', '.join(map(str, sizes[1:]))} slices",
            DataWarning,
            stacklevel=2,
        )
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    return image


def _context() -> multiprocessing.context.BaseContext:
    """A fork server where there is one (a fork of a clean process that has SimpleITK loaded:
    milliseconds), else spawn (a fresh interpreter: a few tenths of a second)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _read_largest_series(folder: str) -> tuple[np.ndarray, dict[str, Any], list[int]]:
    """In the child: the largest series' voxels (z, y, x), geometry, and all series' sizes."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series:
        raise DataError("no readable DICOM series in this folder")
    listed = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, s) for s in series]
    files = max(listed, key=len)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()  # its errors reach read_volume, which makes them a DataError
    check_geometry(image.GetSpacing(), image.GetDirection())
    geometry = {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                "direction": image.GetDirection()}  # fmt: skip
    return sitk.GetArrayFromImage(image), geometry, sorted(map(len, listed), reverse=True)
