"""OpenKBP head-and-neck CT with seven organs at risk: the benchmark's segmentation data.

A case is one patient's CT (int16 HU on a 128^3 grid of about 4 x 4 x 2.5 mm) and its
label map (0 background, 1-7 the organs below). Three facts of the data shape this module:

- **Partial labels.** An organ that was not contoured has no voxels, and its anatomy reads
  as background. Each case therefore carries ``labelled``, the classes that were drawn;
  losses and metrics leave the others out instead of calling them background.
- **Known bad masks.** The split file lists (patient, class) pairs to exclude (the README
  of the data flags two implausible spinal cords); they count as not contoured.
- **A region of interest from the image alone.** The organs sit within a 64 x 64 voxel
  column around the body's centre in the axial plane, so every case is cropped to that
  column (all slices) around the centre of mass of its voxels above -500 HU. No label is
  used to place it; label voxels outside it (0.4 % over all patients) stay in the full
  label map that test metrics compare against, where they count as misses.

Intensities follow pretraining: clip to the weights' HU window (the paper's [-1000, 1000]
unless their recipe says otherwise), scale to [0, 1], then zero mean and unit variance over
the region (the pretrained encoder saw z-normalised views).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError

ORGANS = (
    "Brainstem",
    "SpinalCord",
    "RightParotid",
    "LeftParotid",
    "Esophagus",
    "Larynx",
    "Mandible",
)
NUM_CLASSES = 1 + len(ORGANS)
HU_WINDOW = (-1000.0, 1000.0)
BODY_HU = -500.0
SPLIT_FILE = "openkbp_split.json"


@dataclass(frozen=True)
class Case:
    """One patient, cropped to its region of interest (ROI)."""

    name: str
    image: np.ndarray  # float32 (1, *roi), z-normalised
    label: np.ndarray  # uint8 (*roi); excluded classes set to 0
    labelled: np.ndarray  # bool (NUM_CLASSES,): classes contoured (background always True)
    roi: tuple[slice, slice, slice]  # where the ROI lies in the full grid
    full_shape: tuple[int, int, int]

    @property
    def fully_labelled(self) -> bool:
        return bool(self.labelled.all())


@dataclass(frozen=True)
class Split:
    """The fixed patient split: ``test`` is never used for training or for any choice."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    excluded: dict[str, tuple[int, ...]]


def read_split(path: str | Path | None = None) -> Split:
    """The split shipped with the package (or another file of the same form)."""
    if path is None:
        text = resources.files(__package__).joinpath(SPLIT_FILE).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    document = json.loads(text)
    excluded = {name: tuple(classes) for name, classes in document["excluded_labels"].items()}
    return Split(
        tuple(document["train"]), tuple(document["val"]), tuple(document["test"]), excluded
    )


def load_cases(
    root: str | Path,
    names: tuple[str, ...] | list[str],
    excluded: dict[str, tuple[int, ...]],
    roi_size: tuple[int, int, int],
    window: tuple[float, float] = HU_WINDOW,
) -> list[Case]:
    """Read ``root/images/NAME.nii.gz`` and ``root/labels/NAME.nii.gz`` for each name."""
    return [
        _load_case(Path(root), name, excluded.get(name, ()), roi_size, window) for name in names
    ]


def read_full_label(root: str | Path, case: Case) -> np.ndarray:
    """The whole label map of ``case`` (what test metrics compare against)."""
    label = _read_array(Path(root) / "labels" / f"{case.name}.nii.gz").astype(np.uint8)
    excluded = np.flatnonzero(~case.labelled)
    label[np.isin(label, excluded)] = 0
    return label


def paste(prediction: np.ndarray, case: Case) -> np.ndarray:
    """A ROI label map put back into the full grid (background outside the ROI)."""
    full = np.zeros(case.full_shape, dtype=prediction.dtype)
    full[case.roi] = prediction
    return full


def _load_case(
    root: Path,
    name: str,
    excluded: tuple[int, ...],
    roi_size: tuple[int, ...],
    window: tuple[float, float],
) -> Case:
    hu = _read_array(root / "images" / f"{name}.nii.gz").astype(np.float32)
    label = _read_array(root / "labels" / f"{name}.nii.gz")
    if hu.shape != label.shape:
        raise DataError(
            f"{name}: image {hu.shape} and label map {label.shape} differ in size; the "
            "OpenKBP folder must hold images/ and labels/ of the same grid."
        )
    if label.max() >= NUM_CLASSES:
        raise DataError(f"{name}: label values above {NUM_CLASSES - 1} in {root / 'labels'}.")
    label = label.astype(np.uint8)
    labelled = np.bincount(label.ravel(), minlength=NUM_CLASSES) > 0
    labelled[0] = True
    for value in excluded:
        labelled[value] = False
        label[label == value] = 0
    roi = body_roi(hu, roi_size)
    scaled = np.clip((hu[roi] - window[0]) / (window[1] - window[0]), 0.0, 1.0)
    image = (scaled - scaled.mean()) / max(float(scaled.std()), 1e-6)
    return Case(name, image[None].astype(np.float32), label[roi], labelled, roi, hu.shape)


def body_roi(hu: np.ndarray, roi_size: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """A ``roi_size`` box centred on the centre of mass of the body (voxels > -500 HU),
    shifted to lie inside the grid; an axis shorter than the box is taken whole."""
    body = np.argwhere(hu > BODY_HU)
    centre = body.mean(axis=0) if len(body) else np.array(hu.shape) / 2
    slices = []
    for axis, size in enumerate(roi_size):
        length = hu.shape[axis]
        if size >= length:
            slices.append(slice(0, length))
            continue
        start = int(np.clip(round(centre[axis] - size / 2), 0, length - size))
        slices.append(slice(start, start + size))
    return tuple(slices)


def _read_array(path: Path) -> np.ndarray:
    """A NIfTI volume as (x, y, z), the order the package uses everywhere."""
    import SimpleITK as sitk

    if not path.is_file():
        raise DataError(
            f"{path} is missing; point --openkbp at the folder holding OpenKBP's images/ "
            "and labels/ (e.g. shared/data/openkbp_oars)."
        )
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)
    except RuntimeError as error:
        raise DataError(f"cannot read {path} ({' '.join(str(error).split())[:200]}).") from error
