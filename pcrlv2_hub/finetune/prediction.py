"""``predict``: a trained run segments whole volumes, written back on each input's grid."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import SimpleITK as sitk
import torch

from ..errors import InvalidInputError
from ..pretrain.volumes import find_volumes
from .case_volumes import load_case, restore_geometry
from .cases import Case, case_name, read_cases
from .inference import predict_labels
from .volume_run import load_run, preprocessing_of


def predict_folder(
    run_dir: str | Path,
    inputs: str | Path,
    output: str | Path,
    *,
    overlap: float | None = None,
    device: str | None = None,
    log=print,
) -> list[Path]:
    """One ``NAME.nii.gz`` label map per case of ``inputs`` (a folder of volumes, or a
    dataset layout for several channels), with the input's size, spacing, origin and
    direction."""
    model, described = load_run(run_dir)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target)
    preprocessing = preprocessing_of(described)
    patches = described["config"]["patches"]
    cases = _cases(Path(inputs), described["network"]["in_channels"])
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for case in cases:
        loaded = load_case(
            Case(case.name, case.images), preprocessing, described["network"]["num_classes"]
        )
        labels = predict_labels(
            model,
            torch.from_numpy(loaded.image),
            patches["patch_size"],
            overlap=patches["overlap"] if overlap is None else overlap,
            device=target,
        )
        path = output / f"{case.name}.nii.gz"
        _write_atomically(restore_geometry(labels.numpy(), loaded), path)
        log(f"{case.name}: {path}")
        written.append(path)
    return written


def _cases(inputs: Path, channels: int) -> list[Case]:
    try:
        cases = list(read_cases(inputs).cases)
    except InvalidInputError:
        cases = _named_by_path(find_volumes(inputs), inputs)
    wrong = [case.name for case in cases if len(case.images) != channels]
    if wrong:
        raise InvalidInputError(
            f"the run's network takes {channels} channel(s), but {', '.join(wrong[:5])} in "
            f"{inputs} have another number; give a dataset layout with {channels} images per case."
        )
    return cases


def _write_atomically(image: sitk.Image, path: Path) -> None:
    """Written beside ``path`` under its own name (ITK picks the format by extension),
    then renamed: an interrupted run leaves no partial label map."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".writing-") as folder:
        staged = Path(folder) / path.name
        sitk.WriteImage(image, str(staged), useCompression=True)
        os.replace(staged, path)


def _named_by_path(volumes: list[Path], inputs: Path) -> list[Case]:
    """One case per volume, named by its file; by its path under ``inputs`` where files
    share a name (``s0001/ct.nii.gz``, ``s0002/ct.nii.gz``), so no output overwrites another."""
    names = [case_name(path) for path in volumes]
    if len(set(names)) < len(names):
        names = [
            "_".join((*path.relative_to(inputs).parent.parts, case_name(path)))
            if inputs.is_dir()
            else case_name(path)
            for path in volumes
        ]
    if len(set(names)) < len(names):
        raise InvalidInputError(f"{inputs}: several volumes would give the same output name.")
    return [Case(name, (path,)) for name, path in zip(names, volumes, strict=True)]
