"""Readers of the labelled-data layouts; each returns ``{split: (images, targets)}`` arrays.

They only gather arrays and report layout problems (a missing key, a file without its
mask, images of different sizes); :mod:`.datasets` checks shapes and labels for the task.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DataError

RawSplits = dict[str, tuple[np.ndarray, np.ndarray]]
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_npz(path: Path, target_name: str) -> RawSplits:
    """``{split}_images`` with ``{split}_{target_name}`` (``labels`` or ``masks``) per split."""
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except MemoryError as error:
        raise DataError(f"{path} is too large to read into memory.") from error
    except Exception as error:  # NumPy and zipfile fail in many ways on damaged bytes
        raise DataError(
            f"{path} is not a readable .npz archive ({type(error).__name__}: {error})."
        ) from error
    if not isinstance(arrays, dict):
        raise DataError(f"{path} holds a single array, not an .npz archive of splits.")
    raw = {}
    for key in arrays:
        prefix, _, kind = key.rpartition("_")
        if kind == "images" and prefix in SPLIT_ALIASES:
            target_key = f"{prefix}_{target_name}"
            if target_key not in arrays:
                raise DataError(f"{path} has {key} but no {target_key}; it holds {sorted(arrays)}.")
            raw[SPLIT_ALIASES[prefix]] = (arrays[key], arrays[target_key])
    return raw


def read_image_folders(root: Path) -> RawSplits:
    """2D images in ``root/{split}/{class_name}/``; one class index per sorted class name."""
    split_dirs = _split_dirs(root)
    classes = sorted(
        {d.name for split in split_dirs.values() for d in split.iterdir() if d.is_dir()}
    )
    raw = {}
    for split, split_dir in split_dirs.items():
        files, labels = [], []
        for index, name in enumerate(classes):
            found = _files(split_dir / name, IMAGE_SUFFIXES)
            files += found
            labels += [index] * len(found)
        raw[split] = (_stack([_read_image(f) for f in files], files), np.array(labels))
    return raw


def read_volume_table(
    table: Path,
    *,
    spacing: tuple[float, float, float] | None = None,
    volume_size: tuple[int, int, int] | None = None,
) -> RawSplits:
    """Volumes listed in a CSV with the columns ``image,label,split`` (paths relative to it),
    resampled to ``spacing`` and centre-cropped or padded to ``volume_size`` if given."""
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{table} is not a readable UTF-8 CSV table ({error}).") from error
    needed = {"image", "label", "split"}
    if not rows or not needed <= set(rows[0]):
        raise DataError(
            f"{table} needs a header with the columns image,label,split and one row per volume."
        )
    grouped: dict[str, list[dict[str, str]]] = {}
    for number, row in enumerate(rows, start=2):
        if any(not isinstance(row.get(column), str) for column in needed):
            raise DataError(f"{table}, line {number}: needs a value in each of image,label,split.")
        split = SPLIT_ALIASES.get(row["split"].strip().lower())
        if split is None:
            raise DataError(f"{table}: split {row['split']!r} is not one of train, val, test.")
        grouped.setdefault(split, []).append(row)
    raw = {}
    for split, members in grouped.items():
        files = [table.parent / row["image"].strip() for row in members]
        try:
            labels = np.array([int(row["label"]) for row in members])
        except ValueError as error:
            raise DataError(f"{table}: labels must be class indices 0, 1, ... ({error}).") from None
        volumes = [_fitted(_read_volume(f, spacing), volume_size) for f in files]
        raw[split] = (_stack(volumes, files), labels)
    return raw


def read_volume_pairs(root: Path) -> RawSplits:
    """Volumes in ``root/{split}/images/`` with same-named label maps in ``.../masks/``."""
    raw = {}
    for split, split_dir in _split_dirs(root).items():
        images = _files(split_dir / "images", None)
        masks = [split_dir / "masks" / f.name for f in images]
        lonely = [f.name for f, m in zip(images, masks, strict=True) if not m.is_file()]
        if lonely:
            raise DataError(
                f"{split_dir / 'masks'} lacks the masks of {lonely[:5]}; every image needs a "
                "mask of the same file name."
            )
        raw[split] = (
            _stack([_read_volume(f) for f in images], images),
            _stack([_read_mask(m) for m in masks], masks),
        )
    return raw


def _split_dirs(root: Path) -> dict[str, Path]:
    found = {
        SPLIT_ALIASES[d.name.lower()]: d
        for d in root.iterdir()
        if d.is_dir() and d.name.lower() in SPLIT_ALIASES
    }
    if not found:
        raise DataError(
            f"{root} has no train/val/test folders; put the data in {root}/train, "
            f"{root}/val and {root}/test."
        )
    return found


def _files(folder: Path, suffixes: Iterable[str] | None) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file()
        and not f.name.startswith(".")
        and (suffixes is None or f.suffix.lower() in suffixes)
    )


def _stack(arrays: list[np.ndarray], files: list[Path]) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        examples = {a.shape: f.name for a, f in zip(arrays, files, strict=True)}
        raise DataError(
            f"the files differ in size ({', '.join(f'{n}: {s}' for s, n in examples.items())}); "
            "crop, pad or resample them to one size first."
        )
    return np.stack(arrays) if arrays else np.zeros((0,))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except Exception as error:  # Pillow fails in many ways on damaged bytes
        raise DataError(
            f"cannot read the image {path} ({type(error).__name__}: {error})."
        ) from error


def _read_volume(path: Path, spacing: tuple[float, float, float] | None = None) -> np.ndarray:
    """(x, y, z) voxels windowed to [0, 1] as in pretraining (CT: [-1000, 1000] HU), on
    their own grid (so that masks drawn on it still fit) unless ``spacing`` is given."""
    from ..pretrain.volumes import Preprocessing, read_volume

    try:
        return read_volume(path, Preprocessing(spacing=spacing))
    except DataError as error:
        raise DataError(f"cannot read the volume {path} ({error}).") from error


def _fitted(volume: np.ndarray, size: tuple[int, int, int] | None) -> np.ndarray:
    """``volume`` centre-cropped or zero-padded to ``size`` (MONAI), or as it is."""
    if size is None:
        return volume
    from monai.transforms import ResizeWithPadOrCrop

    return np.asarray(ResizeWithPadOrCrop(list(size))(volume[None]))[0]


def _read_mask(path: Path) -> np.ndarray:
    """An integer label map, (x, y, z) like the volumes (``.npy`` arrays are taken as is)."""
    import SimpleITK as sitk

    try:
        if path.suffix.lower() == ".npy":
            return np.load(path)
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)
    except Exception as error:  # NumPy and SimpleITK fail in many ways on damaged bytes
        raise DataError(f"cannot read the mask {path} ({error}).") from error
