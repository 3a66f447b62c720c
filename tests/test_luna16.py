"""The luna16 protocol on a LUNA16-layout folder built from the real chest CT sample: crops
at world coordinates (through origin, spacing and direction), splits by subset, the
negative sampling, padding at the border, end-to-end fine-tuning and the errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pcrlv2_hub.cli import main
from pcrlv2_hub.errors import DataError, InvalidInputError
from pcrlv2_hub.finetune import FinetuneConfig
from pcrlv2_hub.finetune.datasets import load_dataset
from pcrlv2_hub.finetune.luna16 import Luna16Settings, read_luna16

CHEST_CT = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data" / "chest_ct.nii.gz"
FLIPPED_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# series uid -> (subset, origin, direction); one series per split, one of them mirrored
SERIES = {
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.100": (0, (-71.7, -255.7, 576.2), None),
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.500": (5, (10.0, -200.0, -300.5), FLIPPED_X),
    "1.3.6.1.4.1.14519.5.2.1.6279.6001.700": (7, (0.0, 0.0, 0.0), None),
}
# (x, y, z) voxel of each candidate in every series, and its class
VOXELS = [((61, 51, 56), 1), ((40, 60, 30), 0), ((80, 45, 70), 0), ((5, 5, 5), 0)]


def _hu() -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(CHEST_CT))).transpose(2, 1, 0)


def _image(uid: str) -> sitk.Image:
    _, origin, direction = SERIES[uid]
    image = sitk.ReadImage(str(CHEST_CT))
    image.SetOrigin(origin)
    if direction:
        image.SetDirection(direction)
    return image


def _write_table(path: Path, rows: list[tuple]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "class"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def luna(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """subset0, subset5 and subset7 with one real CT series each (.mhd + .raw, as LUNA16
    ships them) and a candidates_V2.csv in world millimetres."""
    root = tmp_path_factory.mktemp("luna16")
    rows = []
    for uid, (subset, _, _) in SERIES.items():
        image = _image(uid)
        (root / f"subset{subset}").mkdir()
        sitk.WriteImage(image, str(root / f"subset{subset}" / f"{uid}.mhd"))
        for voxel, label in VOXELS:
            world = image.TransformIndexToPhysicalPoint(voxel)
            rows.append((uid, *world, label))
    _write_table(root / "candidates_V2.csv", rows)
    return root


def _expected_crop(voxel: tuple[int, int, int]) -> np.ndarray:
    """The crop cut by hand from the HU array: windowed [-1000, 1000] -> [0, 1]."""
    unit = np.clip((_hu().astype(np.float32) + 1000) / 2000, 0, 1)
    x, y, z = voxel
    return unit[x - 32 : x + 32, y - 32 : y + 32, z - 16 : z + 16]


def test_crops_sit_at_the_candidates_world_coordinates_and_splits_follow_subsets(luna: Path):
    raw = read_luna16(luna)
    assert {name: len(labels) for name, (_, labels) in raw.items()} == {
        "train": 4,
        "val": 4,
        "test": 4,
    }
    for name in ("train", "val", "test"):
        crops, labels = raw[name]
        assert crops.shape == (4, 64, 64, 32) and crops.dtype == np.float32
        assert labels.tolist() == [label for _, label in VOXELS]
        # the mirrored series (val) must give the same crops: the index comes from the
        # world point through its direction, not from origin + spacing alone
        for crop, (voxel, _) in zip(crops[:3], VOXELS[:3], strict=True):
            np.testing.assert_array_equal(crop, _expected_crop(voxel))


def test_a_candidate_at_the_border_is_padded_with_air(luna: Path):
    crops, _ = read_luna16(luna)["test"]
    border = crops[3]  # centred on voxel (5, 5, 5): 27 voxels before x = 0 are outside
    unit = np.clip((_hu().astype(np.float32) + 1000) / 2000, 0, 1)
    assert (border[:27] == 0).all() and (border[:, :27] == 0).all()
    assert (border[:, :, :11] == 0).all()
    np.testing.assert_array_equal(border[27:, 27:, 11:], unit[:37, :37, :21])


def test_every_nodule_is_kept_and_negatives_are_a_seeded_sample(luna: Path):
    settings = Luna16Settings(negatives_per_positive=2.0, seed=4)
    raw = read_luna16(luna, settings)
    labels = np.concatenate([labels for _, labels in raw.values()])
    assert (labels == 1).sum() == 3 and (labels == 0).sum() == 6
    again = read_luna16(luna, settings)
    for name in raw:
        np.testing.assert_array_equal(raw[name][0], again[name][0])


def test_finetune_with_the_luna16_protocol_runs_end_to_end(luna: Path, tmp_path: Path):
    code = main(
        ["finetune", "--task", "classify3d", "--protocol", "luna16", "--data", str(luna),
         "--epochs", "1", "--output", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"]["samples"] == {"train": 4, "val": 4, "test": 4}
    assert results["config"]["protocol"] == "luna16"
    assert results["config"]["training"]["batch_size"] == 24
    assert 0 <= results["metrics"]["test"]["auc"] <= 1


def test_bad_luna16_input_gets_clear_errors(luna: Path, tmp_path: Path):
    with pytest.raises(DataError, match="not a LUNA16 folder"):
        load_dataset(tmp_path, 3, False, luna16=Luna16Settings())
    with pytest.raises(InvalidInputError, match="--task classify3d"):
        FinetuneConfig(task="segment3d", data=str(luna), protocol="luna16")
    broken = tmp_path / "broken"
    (broken / "subset0").mkdir(parents=True)
    _write_table(broken / "candidates_V2.csv", [("1.2.3.missing", 0.0, 0.0, 0.0, 1)])
    with pytest.raises(DataError, match=r"no \.mhd in a subset folder"):
        read_luna16(broken)
    _write_table(broken / "candidates_V2.csv", [("1.2.3", "left", 0.0, 0.0, 1)])
    with pytest.raises(DataError, match="coordinates must be numbers"):
        read_luna16(broken)
