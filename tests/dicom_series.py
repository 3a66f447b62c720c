"""Writing a CT as a DICOM series, one slice per file, for the tests and the fuzz seeds."""

from __future__ import annotations

import locale
from pathlib import Path

import SimpleITK as sitk


def write_dicom_series(
    image: sitk.Image, folder: Path, series: int = 1, prefix: str = "slice"
) -> None:
    """One CT slice per file, with the tags a series reader sorts and places them by.

    ``series`` numbers the series (its UID) and ``prefix`` names its files, so that one
    folder can hold several series.

    GDCM's writer leaves the process in the "C" locale, after which Python decodes text
    (``open``, ``subprocess``) as ASCII; the caller's locale is put back.
    """
    saved = locale.setlocale(locale.LC_ALL)
    folder.mkdir(exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    orientation = "\\".join(str(v) for v in direction[0:7:3] + direction[1:8:3])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    try:
        for k in range(image.GetDepth()):
            piece = image[:, :, k]
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            tags = {
                "0008|0060": "CT",
                "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
                "0020|000e": f"1.2.826.0.1.3680043.2.1125.1.{series}",
                "0020|0037": orientation,
                "0020|0032": "\\".join(str(v) for v in position),
                "0020|0013": str(k + 1),
                "0018|0050": str(image.GetSpacing()[2]),
            }
            for tag, value in tags.items():
                piece.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
            writer.Execute(piece)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
