"""LUNA16 nodule candidates as a 3D classification dataset (the paper's luna16 protocol).

A LUNA16 folder holds the CT series as ``subset0/`` ... ``subset9/`` (``SERIESUID.mhd`` +
``.raw``) and a candidates table (``candidates_V2.csv`` or ``candidates.csv``: seriesuid,
coordX, coordY, coordZ in world millimetres, class 1 for a nodule). Each candidate becomes a
crop of the CT around it, labelled by its class. The settings follow the Models Genesis
nodule false-positive reduction task that PCRLv2 reports: 64 x 64 x 32 voxels, HU window
[-1000, 1000], subsets 0-4 to train, 5-6 to validate, 7-9 to test. LUNA16 lists about 750,000
candidates of which about 1,500 are nodules, so every nodule is kept, with a seeded sample of
``negatives_per_positive`` non-nodules per nodule drawn from the whole table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DataError
from ..pretrain.volumes import Preprocessing, read_image, window

CANDIDATE_TABLES = ("candidates_V2.csv", "candidates.csv")
COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")


@dataclass(frozen=True)
class Luna16Settings:
    """How candidates become crops, and which subsets make each split."""

    crop_size: tuple[int, int, int] = (64, 64, 32)
    """Voxels along x, y, z, on the series' own grid unless ``spacing`` is given."""
    spacing: tuple[float, float, float] | None = None
    window: tuple[float, float] = (-1000.0, 1000.0)
    folds: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4), (5, 6), (7, 8, 9))
    """Subset numbers of the train, val and test splits."""
    negatives_per_positive: float = 10.0
    seed: int = 0


def is_luna16(root: Path) -> bool:
    """A folder with a candidates table and at least one ``subsetN`` folder."""
    return (
        root.is_dir()
        and any((root / name).is_file() for name in CANDIDATE_TABLES)
        and any(root.glob("subset[0-9]"))
    )


def read_luna16(
    root: Path, settings: Luna16Settings = Luna16Settings()
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (crops (N, x, y, z) float32 in [0, 1], classes (N,))}`` for train/val/test."""
    candidates = _chosen(_read_candidates(root), settings)
    series = _series_files(root)
    missing = sorted({c.series for c in candidates} - set(series))
    if missing:
        raise DataError(
            f"{root}: the candidates table names {len(missing)} series with no .mhd in a "
            f"subset folder (e.g. {missing[0]}); unpack every subset, or remove those rows."
        )
    preprocessing = Preprocessing(spacing=settings.spacing, window=settings.window)
    by_series: dict[str, list[int]] = {}
    for index, candidate in enumerate(candidates):
        by_series.setdefault(candidate.series, []).append(index)
    crops: dict[int, np.ndarray] = {}
    for uid, indices in sorted(by_series.items()):
        path, _ = series[uid]
        try:
            image = read_image(path, preprocessing, resampled=True)
        except DataError as error:
            raise DataError(f"cannot read the LUNA16 series {path} ({error}).") from error
        voxels = window(sitk.GetArrayFromImage(image).transpose(2, 1, 0), preprocessing)
        for index in indices:
            centre = image.TransformPhysicalPointToContinuousIndex(candidates[index].world)
            crops[index] = crop_around(voxels, centre, settings.crop_size)
    raw = {}
    for name, fold in zip(("train", "val", "test"), settings.folds, strict=True):
        chosen = [i for i, c in enumerate(candidates) if series[c.series][1] in fold]
        images = np.stack([crops[i] for i in chosen]) if chosen else np.zeros((0,))
        raw[name] = (images, np.array([candidates[i].label for i in chosen], dtype=np.int16))
    return raw


def crop_around(
    voxels: np.ndarray, centre: tuple[float, ...], size: tuple[int, int, int]
) -> np.ndarray:
    """The ``size`` box of ``voxels`` centred on the continuous index ``centre``; outside
    the volume it is 0 (air, after the CT window)."""
    start = [int(np.floor(c + 0.5)) - s // 2 for c, s in zip(centre, size, strict=True)]
    crop = np.zeros(size, np.float32)
    inside = tuple(
        slice(max(0, b), min(n, b + s)) for b, s, n in zip(start, size, voxels.shape, strict=True)
    )
    target = tuple(slice(k.start - b, k.stop - b) for k, b in zip(inside, start, strict=True))
    if all(k.stop > k.start for k in inside):
        crop[target] = voxels[inside]
    return crop


@dataclass(frozen=True)
class _Candidate:
    series: str
    world: tuple[float, float, float]
    label: int


def _read_candidates(root: Path) -> list[_Candidate]:
    table = next(root / name for name in CANDIDATE_TABLES if (root / name).is_file())
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{table} is not a readable UTF-8 CSV table ({error}).") from error
    if not rows or not set(COLUMNS) <= set(rows[0]):
        raise DataError(f"{table} needs the columns {','.join(COLUMNS)} (as LUNA16 ships it).")
    try:
        return [
            _Candidate(
                row["seriesuid"].strip(),
                (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])),
                int(row["class"]),
            )
            for row in rows
        ]
    except (TypeError, ValueError) as error:
        raise DataError(f"{table}: coordinates must be numbers, class 0 or 1 ({error}).") from None


def _chosen(candidates: list[_Candidate], settings: Luna16Settings) -> list[_Candidate]:
    """Every nodule, and ``negatives_per_positive`` seeded non-nodules per nodule (all of
    them if there are fewer), in the table's order."""
    if any(c.label not in (0, 1) for c in candidates):
        raise DataError("LUNA16 candidates have class 0 (no nodule) or 1 (nodule), nothing else.")
    labels = np.array([c.label for c in candidates])
    negatives = np.flatnonzero(labels == 0)
    wanted = round(settings.negatives_per_positive * max(1, int((labels == 1).sum())))
    drawn = np.random.default_rng(settings.seed).permutation(negatives)[:wanted]
    keep = set(np.flatnonzero(labels == 1).tolist()) | set(drawn.tolist())
    return [c for i, c in enumerate(candidates) if i in keep]


def _series_files(root: Path) -> dict[str, tuple[Path, int]]:
    """Series uid -> (its .mhd file, its subset number)."""
    found = {}
    for folder in sorted(root.glob("subset[0-9]")):
        for header in folder.glob("*.mhd"):
            found[header.stem] = (header, int(folder.name[len("subset") :]))
    return found
