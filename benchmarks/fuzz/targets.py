"""What the fuzz campaign attacks: each target is a small, valid seed and the reader a user calls.

A seed is a folder of files built from real data (the package's sample CT, AdrenalMNIST3D
and chest X-rays) or written by the package itself (weights); a case copies it, mutates
one of its ``mutable`` files and calls ``read`` on ``entry``. Targets with ``expected``
tensors are files the package wrote: a mutated file that loads must give exactly those
tensors, or it changed silently.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "pcrlv2_hub" / "sample_data"
sys.path.insert(0, str(ROOT / "tests"))

from dicom_series import write_dicom_series  # noqa: E402  (the tests' DICOM writer)

SMALL_WIDTHS = (4, 8, 8, 16)


@dataclass(frozen=True)
class Target:
    name: str
    seed: Path  # the seed folder
    entry: str  # what ``read`` is called on, relative to a case's folder
    mutable: tuple[str, ...]  # the files a case may mutate
    read: Callable[[Path], Any]
    text: bool = False  # also use the text-aware mutations
    expected: dict[str, torch.Tensor] | None = None
    ours: bool = False  # written by the package: it must carry its own check


def _crop_of_sample_ct() -> np.ndarray:
    """A 24 x 24 x 12 block of real chest CT in HU (int16), from the package's sample."""
    import SimpleITK as sitk

    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "chest_ct.nii.gz")))
    z, y, x = (s // 2 for s in volume.shape)
    return volume[z - 6 : z + 6, y - 12 : y + 12, x - 12 : x + 12].astype(np.int16)


def _image(array_zyx: np.ndarray) -> Any:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((1.5, 1.5, 3.0))
    return image


def _write_image(array_zyx: np.ndarray, path: Path, **options: Any) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(_image(array_zyx), str(path), **options)


def _small_network_state() -> dict[str, torch.Tensor]:
    from pcrlv2_hub.models.unet3d import PCRLv2UNet3D

    torch.manual_seed(0)
    return PCRLv2UNet3D(widths=SMALL_WIDTHS).state_dict()


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    import pcrlv2_hub

    return pcrlv2_hub.load(weights=path).state_dict()


def _read_volume(path: Path) -> np.ndarray:
    from pcrlv2_hub.pretrain.volumes import Preprocessing, read_volume

    return read_volume(path, Preprocessing(spacing=(3.0, 3.0, 3.0)))


def _dataset(dims: int) -> Callable[[Path], Any]:
    def read(path: Path) -> Any:
        from pcrlv2_hub.finetune.datasets import load_dataset

        return load_dataset(path, dims, False)

    return read


def _manifest(path: Path) -> Any:
    from pcrlv2_hub.manifest import read_manifest

    return read_manifest(path)


def build_targets(work: Path) -> dict[str, Target]:
    """Every target's seed folder under ``work``, built once per campaign."""
    from pcrlv2_hub.weights_file import save_weights

    def folder(name: str) -> Path:
        path = work / name
        path.mkdir(parents=True)
        return path

    state = _small_network_state()
    crop = _crop_of_sample_ct()
    targets = []

    seed = folder("safetensors")
    save_weights(seed / "model.safetensors", state, "pcrlv2_unet3d", {"widths": list(SMALL_WIDTHS)})
    targets.append(Target("safetensors", seed, "model.safetensors", ("model.safetensors",),
                          _load_weights, expected=state, ours=True))  # fmt: skip

    seed = folder("official_pickle")
    options = argparse.Namespace(n="luna", epochs=240, b=32, lr=1e-3, seed=42)
    official = {"opt": options, "state_dict": {f"module.{k}": v for k, v in state.items()},
                "epoch": 240}  # fmt: skip
    torch.save(official, seed / "official.pt")
    targets.append(Target("official_pickle", seed, "official.pt", ("official.pt",),
                          _load_weights, expected=state))  # fmt: skip

    for name, filename in (("nifti_gz", "ct.nii.gz"), ("nifti", "ct.nii")):
        seed = folder(name)
        _write_image(crop, seed / filename)
        targets.append(Target(name, seed, filename, (filename,), _read_volume))

    seed = folder("mhd_raw")
    _write_image(crop, seed / "ct.mhd", useCompression=False)
    targets.append(Target("mhd_raw", seed, "ct.mhd", ("ct.mhd", "ct.raw"), _read_volume, text=True))

    seed = folder("dicom")
    write_dicom_series(_image(crop), seed / "series")
    slices = tuple(sorted(f"series/{p.name}" for p in (seed / "series").iterdir()))
    targets.append(Target("dicom", seed, "series", slices, _read_volume))

    seed = folder("npy_npz")
    np.save(seed / "ct.npy", crop.transpose(2, 1, 0))
    np.savez(seed / "ct.npz", image=crop.transpose(2, 1, 0), spacing=np.array([1.5, 1.5, 3.0]))
    targets.append(Target("npy", seed, "ct.npy", ("ct.npy",), _read_volume))
    targets.append(Target("npz_volume", seed, "ct.npz", ("ct.npz",), _read_volume))

    seed = folder("finetune_npz")
    with np.load(SAMPLE / "adrenalmnist3d.npz") as adrenal:
        keys = [
            f"{split}_{kind}" for split in ("train", "val", "test") for kind in ("images", "labels")
        ]
        arrays = {key: adrenal[key][:6] for key in keys}
    np.savez(seed / "adrenal.npz", **arrays)
    targets.append(Target("finetune_npz", seed, "adrenal.npz", ("adrenal.npz",), _dataset(3)))

    seed = folder("finetune_csv")
    rows = ["image,label,split"]
    for index in range(6):
        np.save(seed / f"v{index}.npy", arrays["train_images"][index])
        rows.append(
            f"v{index}.npy,{index % 2},{('train', 'train', 'val', 'val', 'test', 'test')[index]}"
        )
    (seed / "labels.csv").write_text("\n".join(rows) + "\n")
    mutable = ("labels.csv", "labels.csv", "v0.npy")  # the table twice as often
    targets.append(Target("finetune_csv", seed, "labels.csv", mutable, _dataset(3), text=True))

    seed = folder("finetune_folders")
    pngs = []
    for label in ("0_normal", "1_abnormal"):
        for index, xray in enumerate(sorted((SAMPLE / "chestxray" / label).glob("*.png"))[:6]):
            split = ("train", "val", "test")[index % 3]
            (seed / split / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(xray, seed / split / label / xray.name)
            pngs.append(f"{split}/{label}/{xray.name}")
    targets.append(Target("finetune_folders", seed, ".", tuple(pngs), _dataset(2)))

    seed = folder("manifest")
    shutil.copy(ROOT / "weights_manifest.json", seed / "weights_manifest.json")
    targets.append(Target("manifest", seed, "weights_manifest.json", ("weights_manifest.json",),
                          _manifest, text=True))  # fmt: skip
    return {target.name: target for target in targets}


def tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def describe(targets: dict[str, Target]) -> dict[str, Any]:
    return {name: {"entry": t.entry, "mutable": list(t.mutable), "text": t.text,
                   "written_by_the_package": t.ours}
            for name, t in targets.items()}  # fmt: skip
