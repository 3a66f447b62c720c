"""Segmentation datasets as the field lays them out, read into a list of cases.

Three layouts, the ones nnU-Net, MONAI and the BraTS challenge use:

- a **Medical Segmentation Decathlon** folder: ``dataset.json`` with ``training`` (image
  and label paths) and ``test`` lists, ``labels`` (value -> name), ``modality``;
- **BraTS case folders**: ``CASE/CASE_{t1,t1ce,t2,flair}.nii.gz`` and ``CASE/CASE_seg.nii.gz``,
  the four sequences read as four channels;
- a **CSV table**: an ``image`` column (or ``image_*`` columns, one per channel, in order),
  ``label``, and optionally ``split`` (train/val/test) and ``labelled``.

Real sets are not contoured completely: a structure missing from a case was not drawn,
which is not background. A training entry may therefore list the classes it labels
(``"labelled": [1, 2, 4]`` in ``dataset.json``, ``"1 2 4"`` in the CSV); the others are
left out of that case's loss and metrics. Paths are relative to the dataset's folder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, InvalidInputError
from ..pretrain.volumes import VOLUME_SUFFIXES

BRATS_SEQUENCES = ("t1", "t1ce", "t2", "flair")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Case:
    """One patient: its image channels, its label map and which classes that map labels."""

    name: str
    images: tuple[Path, ...]
    label: Path | None = None
    labelled: tuple[int, ...] | None = None
    """Classes contoured in this case (background always is); None: every class."""
    split: str | None = None
    """The split the dataset assigns it to, if it does."""


@dataclass(frozen=True)
class CaseDataset:
    """The cases of a dataset and what its labels mean."""

    root: Path
    cases: tuple[Case, ...]
    class_names: tuple[str, ...]
    """Index 0 is background."""
    channel_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def read_cases(path: str | Path) -> CaseDataset:
    """A Decathlon folder, a folder of BraTS case folders, or a CSV table."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _read_table(path)
    if (path / "dataset.json").is_file():
        return _read_decathlon(path)
    if path.is_dir() and any(_is_brats_case(folder) for folder in path.iterdir()):
        return _read_brats(path)
    raise InvalidInputError(
        f"{path} is not a segmentation dataset: give a Decathlon folder (with dataset.json), "
        "a folder of BraTS case folders (CASE/CASE_t1.nii.gz ... CASE_seg.nii.gz) or a CSV "
        "table with image and label columns."
    )


def split_cases(
    dataset: CaseDataset, seed: int = 0, fractions: tuple[float, float] = (0.2, 0.2)
) -> dict[str, list[Case]]:
    """train/val/test by case: the dataset's own split where it gives one, else a seeded
    shuffle of the labelled cases with ``fractions`` (val, test) held out."""
    labelled = [case for case in dataset.cases if case.label is not None]
    if any(case.split for case in labelled):
        return {split: [c for c in labelled if (c.split or "train") == split] for split in SPLITS}
    order = np.random.default_rng(seed).permutation(len(labelled))
    shuffled = [labelled[i] for i in order]
    held_out = [round(fraction * len(shuffled)) for fraction in fractions]
    if len(shuffled) - sum(held_out) < 1:
        raise DataError(
            f"{dataset.root}: {len(shuffled)} labelled cases cannot give train, val and test "
            f"splits of {fractions}; add cases or hold fewer out."
        )
    val, test = shuffled[: held_out[0]], shuffled[held_out[0] : sum(held_out)]
    return {"train": shuffled[sum(held_out) :], "val": val, "test": test}


def _read_decathlon(root: Path) -> CaseDataset:
    where = root / "dataset.json"
    try:
        described = json.loads(where.read_text(encoding="utf-8"))
        labels = {int(value): str(name) for value, name in described["labels"].items()}
        entries = described["training"]
        modality = described.get("modality", {"0": "image"})
        channels = tuple(str(modality[key]) for key in sorted(modality, key=int))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(
            f"{where} is not a Decathlon dataset.json (needs 'labels' and 'training'): {error}"
        ) from error
    cases = [_decathlon_case(root, entry, index, where) for index, entry in enumerate(entries)]
    for entry in described.get("test", []):
        images = _paths(root, entry.get("image") if isinstance(entry, dict) else entry, where)
        cases.append(Case(case_name(images[0]), images, split="test"))
    return CaseDataset(root, tuple(cases), _class_names(labels, where), channels)


def _decathlon_case(root: Path, entry: Any, index: int, where: Path) -> Case:
    if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
        raise DataError(f"{where}: training entry {index} needs 'image' and 'label' paths.")
    images = _paths(root, entry["image"], where)
    label = _paths(root, entry["label"], where)[0]
    return Case(case_name(label), images, label, _labelled(entry.get("labelled"), where), None)


def _read_brats(root: Path) -> CaseDataset:
    cases = []
    for folder in sorted(p for p in root.iterdir() if _is_brats_case(p) or _brats_label(p)):
        label = _brats_label(folder)
        images = []
        for sequence in BRATS_SEQUENCES:
            found = [p for p in folder.glob(f"{folder.name}_{sequence}.nii*")]
            if not found:
                raise DataError(
                    f"{folder}: the BraTS case has no {sequence} sequence "
                    f"({folder.name}_{sequence}.nii.gz); every case needs "
                    f"{', '.join(BRATS_SEQUENCES)}."
                )
            images.append(found[0])
        cases.append(Case(folder.name, tuple(images), label))
    names = ("background", "necrotic core", "oedema", "(unused)", "enhancing tumour")
    return CaseDataset(root, tuple(cases), names, BRATS_SEQUENCES)


def _is_brats_case(folder: Path) -> bool:
    """A case folder by its sequences, so that unlabelled sets (BraTS validation) count."""
    return folder.is_dir() and any(folder.glob(f"{folder.name}_t1.nii*"))


def _brats_label(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    return next(iter(folder.glob(f"{folder.name}_seg.nii*")), None)


def _read_table(table: Path) -> CaseDataset:
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{table} is not a readable CSV table: {error}") from error
    columns = list(rows[0]) if rows else []
    image_columns = [c for c in columns if c == "image" or c.startswith("image_")]
    if not image_columns or "label" not in columns:
        raise DataError(f"{table} needs an 'image' (or image_*) column and a 'label' column.")
    cases, highest = [], 0
    for row in rows:
        images = tuple(_paths(table.parent, row[c], table)[0] for c in image_columns)
        label = _paths(table.parent, row["label"], table)[0] if row["label"] else None
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{table}: split must be one of {SPLITS}, not {split!r}.")
        labelled = (row.get("labelled") or "").replace(",", " ").split()
        if not all(value.isdigit() for value in labelled):
            raise DataError(f"{table}: 'labelled' lists class values, not {row['labelled']!r}.")
        classes = _labelled([int(c) for c in labelled] if labelled else None, table)
        highest = max(highest, *(classes or (0,)))
        cases.append(Case(case_name(images[0]), images, label, classes, split))
    highest = max([highest, *(_largest_value(c.label) for c in cases if c.label is not None)])
    names = ("background", *(f"class {i}" for i in range(1, highest + 1)))
    return CaseDataset(table.parent, tuple(cases), names, tuple(image_columns))


def _largest_value(label: Path) -> int:
    """The largest class value in a label map: a CSV names no classes, the maps do."""
    import SimpleITK as sitk

    try:
        extremes = sitk.MinimumMaximumImageFilter()
        extremes.Execute(sitk.ReadImage(str(label)))
    except RuntimeError as error:
        raise DataError(f"the label map {label} cannot be read: {error}") from error
    return int(extremes.GetMaximum())


def _paths(root: Path, value: Any, where: Path) -> tuple[Path, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise DataError(f"{where}: {value!r} is not a path or a list of paths.")
    paths = tuple((root / v).resolve() for v in values)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DataError(f"{where} names files that do not exist: {', '.join(missing)}.")
    return paths


def _labelled(value: Any, where: Path) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
        raise DataError(f"{where}: 'labelled' must list class values >= 1, not {value!r}.")
    return tuple(sorted(set(value)))


def _class_names(labels: dict[int, str], where: Path) -> tuple[str, ...]:
    if sorted(labels) != list(range(len(labels))):
        raise DataError(f"{where}: 'labels' must number the classes 0, 1, ... without gaps.")
    return tuple(labels[i] for i in range(len(labels)))


def case_name(path: Path) -> str:
    """A volume file's name without its (possibly double) extension."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
