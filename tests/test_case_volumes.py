"""Whole-volume segmentation data: layouts, geometry, patches and sliding windows, on real CT."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import pcrlv2_hub
from pcrlv2_hub import DataError, InvalidInputError
from pcrlv2_hub.cli import main
from pcrlv2_hub.finetune.case_volumes import Geometry, load_case, restore_geometry
from pcrlv2_hub.finetune.cases import Case, read_cases, split_cases
from pcrlv2_hub.finetune.datasets import load_dataset
from pcrlv2_hub.finetune.inference import predict_labels, predict_probabilities
from pcrlv2_hub.finetune.patch_training import _CaseLoader
from pcrlv2_hub.finetune.patches import patch_transform
from pcrlv2_hub.finetune.segmentation_metrics import case_metrics, region_metrics, summarise
from pcrlv2_hub.pretrain.volumes import Preprocessing
from pcrlv2_hub.weights_file import read_metadata

DATA = Path(__file__).parent / "data"
OPENKBP = DATA / "openkbp"
ABDOMEN_CT = Path(pcrlv2_hub.__file__).parent / "sample_data" / "abdomen_ct.nii.gz"
ABDOMEN_SEG = DATA / "totalsegmentator" / "example_seg.nii.gz"
ORGANS = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx",
          "Mandible"]  # fmt: skip
AS_IS = Preprocessing(spacing=None)


@pytest.fixture
def decathlon(tmp_path: Path) -> Path:
    """The five OpenKBP test patients as a Decathlon folder; pt_3 has four organs contoured."""
    root = tmp_path / "Task100_OpenKBP"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    training = []
    for image in sorted((OPENKBP / "images").glob("*.nii.gz")):
        shutil.copy(image, root / "imagesTr" / image.name)
        shutil.copy(OPENKBP / "labels" / image.name, root / "labelsTr" / image.name)
        entry = {"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{image.name}"}
        present = np.unique(
            sitk.GetArrayFromImage(sitk.ReadImage(str(image).replace("images", "labels")))
        )
        if len(present) < 8:
            entry["labelled"] = [int(v) for v in present if v]
        training.append(entry)
    labels = {"0": "background", **{str(i + 1): name for i, name in enumerate(ORGANS)}}
    described = {"name": "OpenKBP", "modality": {"0": "CT"}, "labels": labels,
                 "training": training, "test": []}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(described))
    return root


def test_a_decathlon_folder_reads_with_its_partial_labels(decathlon: Path):
    dataset = read_cases(decathlon)
    assert dataset.num_classes == 8 and dataset.channel_names == ("CT",)
    cases = {case.name: case for case in dataset.cases}
    assert sorted(cases) == ["pt_13", "pt_201", "pt_215", "pt_3", "pt_4"]
    assert cases["pt_3"].labelled is not None and len(cases["pt_3"].labelled) == 4
    loaded = load_case(cases["pt_3"], Preprocessing(spacing=(4.0, 4.0, 4.0)), 8)
    assert loaded.image.shape[0] == 1 and loaded.image.shape[1:] == loaded.label.shape
    assert set(np.unique(loaded.label)) <= {0, *cases["pt_3"].labelled}
    assert loaded.original == Geometry.of(sitk.ReadImage(str(cases["pt_3"].images[0])))
    assert loaded.image.min() >= 0.0 and loaded.image.max() <= 1.0


def test_seeded_splits_are_by_case_and_reproducible(decathlon: Path):
    dataset = read_cases(decathlon)
    splits = split_cases(dataset, seed=3, fractions=(0.2, 0.2))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert split_cases(dataset, seed=3) == splits
    names = [c.name for s in splits.values() for c in s]
    assert sorted(names) == sorted(c.name for c in dataset.cases)


def test_a_brats_case_folder_loads_as_four_channels(tmp_path: Path):
    """Four filterings of one real CT stand in for four co-registered MRI sequences."""
    case = tmp_path / "brats" / "Case_001"
    case.mkdir(parents=True)
    ct = sitk.ReadImage(str(OPENKBP / "images" / "pt_4.nii.gz"), sitk.sitkFloat32)
    sequences = {"t1": ct, "t1ce": sitk.SmoothingRecursiveGaussian(ct, 2.0), "t2": -ct,
                 "flair": sitk.GradientMagnitude(ct)}  # fmt: skip
    for sequence, image in sequences.items():
        sitk.WriteImage(image, str(case / f"Case_001_{sequence}.nii.gz"))
    label = sitk.ReadImage(str(OPENKBP / "labels" / "pt_4.nii.gz"))
    sitk.WriteImage(sitk.Clamp(label, upperBound=2), str(case / "Case_001_seg.nii.gz"))
    dataset = read_cases(tmp_path / "brats")
    loaded = load_case(dataset.cases[0], Preprocessing(spacing=None, modality="mri"), 5)
    assert loaded.image.shape == (4, 128, 128, 128) and loaded.image.dtype == np.float32
    assert dataset.channel_names == ("t1", "t1ce", "t2", "flair")
    assert all(not np.array_equal(loaded.image[0], loaded.image[i]) for i in (1, 2, 3))
    shutil.copy(OPENKBP / "images" / "pt_3.nii.gz", case / "Case_001_t2.nii.gz")  # another grid
    with pytest.raises(DataError, match=r"Case_001_t2.nii.gz .* is not on the grid"):
        load_case(read_cases(tmp_path / "brats").cases[0], AS_IS, 5)
    (case / "Case_001_seg.nii.gz").unlink()  # an unlabelled set, such as BraTS validation
    assert read_cases(tmp_path / "brats").cases[0].label is None
    (case / "Case_001_flair.nii.gz").unlink()
    with pytest.raises(DataError, match="no flair sequence"):
        read_cases(tmp_path / "brats")


def test_a_csv_table_with_splits_and_labelled_classes(tmp_path: Path):
    table = tmp_path / "cases.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "split", "labelled"])
        writer.writerow(
            [OPENKBP / "images/pt_4.nii.gz", OPENKBP / "labels/pt_4.nii.gz", "train", ""]
        )
        writer.writerow(
            [OPENKBP / "images/pt_3.nii.gz", OPENKBP / "labels/pt_3.nii.gz", "val", "1 2 3 4"]
        )
    dataset = read_cases(table)
    splits = split_cases(dataset)
    assert [c.name for c in splits["train"]] == ["pt_4"]
    assert splits["val"][0].labelled == (1, 2, 3, 4)
    assert dataset.num_classes == 8  # from the label maps: a CSV names no classes
    assert load_case(splits["train"][0], AS_IS, dataset.num_classes).label.max() == 7


def test_bad_cases_are_clear_errors(tmp_path: Path):
    mismatched = Case("mismatch", (ABDOMEN_CT,), OPENKBP / "labels" / "pt_4.nii.gz")
    with pytest.raises(DataError, match="not on the image's grid"):
        load_case(mismatched, AS_IS, 8)
    with pytest.raises(DataError, match="outside the 3 classes"):
        load_case(
            Case("few", (OPENKBP / "images/pt_4.nii.gz",), OPENKBP / "labels/pt_4.nii.gz"), AS_IS, 3
        )
    empty = tmp_path / "empty.nii.gz"
    label = sitk.ReadImage(str(OPENKBP / "labels" / "pt_4.nii.gz"))
    sitk.WriteImage(label * 0, str(empty))
    with pytest.raises(DataError, match="is empty"):
        load_case(Case("empty", (OPENKBP / "images/pt_4.nii.gz",), empty), AS_IS, 8)
    assert load_case(Case("none drawn", (OPENKBP / "images/pt_4.nii.gz",), empty, ()), AS_IS, 8)
    partial = Case(
        "pt_4", (OPENKBP / "images/pt_4.nii.gz",), OPENKBP / "labels/pt_4.nii.gz", (1, 2)
    )
    with pytest.raises(DataError, match=r"says it labels the classes \[1, 2\]"):
        load_case(partial, AS_IS, 8)
    item = {"name": "none drawn", "images": [str(OPENKBP / "images/pt_4.nii.gz")],
            "label": str(empty), "labelled": []}  # fmt: skip
    assert _CaseLoader(AS_IS, 8)(item)["labelled"].tolist() == [True] + [False] * 7
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"0": "bg"}, "training": [{"image": "x"}]})
    )
    with pytest.raises(DataError, match="needs 'image' and 'label'"):
        read_cases(tmp_path)
    with pytest.raises(InvalidInputError, match="not a segmentation dataset"):
        read_cases(tmp_path / "nothing")


def test_predictions_go_back_onto_the_input_grid():
    """TotalSegmentator's real abdomen label map, resampled to 4.5 mm and back."""
    case = Case("abdomen", (ABDOMEN_CT,), ABDOMEN_SEG)
    loaded = load_case(case, Preprocessing(spacing=(4.5, 4.5, 4.5)), 118)
    assert loaded.grid.spacing == (4.5, 4.5, 4.5) and loaded.grid.size != loaded.original.size
    restored = restore_geometry(loaded.label, loaded)
    assert Geometry.of(restored) == loaded.original
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(ABDOMEN_SEG)))
    back = sitk.GetArrayFromImage(restored)
    foreground = original > 0
    overlap = (back[foreground] > 0).mean()
    assert overlap > 0.85 and (back == original).mean() > 0.9


@pytest.mark.parametrize("share", [0.0, 0.8])
def test_foreground_oversampling_gives_that_share(share: float):
    loaded = load_case(
        Case("pt_4", (OPENKBP / "images/pt_4.nii.gz",), OPENKBP / "labels/pt_4.nii.gz"), AS_IS, 8
    )
    transform = patch_transform(
        (24, 24, 24), foreground_share=share, patches_per_case=50, augment=False
    )
    transform.set_random_state(seed=0)
    centred_on_organs = []
    for _ in range(8):
        for patch in transform({"image": loaded.image, "label": loaded.label[None]}):
            assert patch["image"].shape == (1, 24, 24, 24) and patch["label"].shape == (
                1,
                24,
                24,
                24,
            )
            centred_on_organs.append(bool(patch["label"][0, 12, 12, 12] > 0))
    assert abs(np.mean(centred_on_organs) - share) < 0.07  # 400 patches: 3.5 standard errors


def test_a_patch_larger_than_the_volume_is_padded():
    loaded = load_case(Case("abdomen", (ABDOMEN_CT,), ABDOMEN_SEG), AS_IS, 118)  # 30 slices
    patches = patch_transform((32, 32, 48), patches_per_case=2)(
        {"image": loaded.image, "label": loaded.label[None]}
    )
    assert all(p["image"].shape == (1, 32, 32, 48) for p in patches)


def test_the_sliding_window_equals_a_whole_forward_where_the_volume_fits():
    model = pcrlv2_hub.load_encoder("unet3d_openct_small", segmentation_classes=8)
    volume = torch.rand(1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = torch.softmax(model(volume[None]), dim=1)[0]
    windowed = predict_probabilities(model, volume, (32, 32, 32))
    torch.testing.assert_close(windowed, whole, rtol=1e-5, atol=1e-6)
    larger = torch.rand(1, 48, 40, 56, generator=torch.Generator().manual_seed(1))
    probabilities = predict_probabilities(model, larger, (32, 32, 32), overlap=0.5)
    assert probabilities.shape == (8, 48, 40, 56)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(48, 40, 56))
    assert predict_labels(model, larger, (32, 32, 32)).shape == (48, 40, 56)
    with pytest.raises(InvalidInputError, match="channels, x, y, z"):
        predict_probabilities(model, larger[0], (32, 32, 32))


def test_dice_and_hd95_agree_with_hand_computed_cases():
    target = np.zeros((12, 12, 12), np.int64)
    predicted = np.zeros_like(target)
    target[2:6, 2:6, 2:6] = 1  # 64 voxels
    predicted[3:7, 2:6, 2:6] = 1  # shifted by one voxel: 48 shared
    target[2, 9, 2] = 2
    predicted[2, 9, 6] = 2  # one voxel each, 4 voxels apart along z
    metrics = case_metrics(predicted, target, 4, spacing=(1.0, 1.0, 2.5), labelled=(1, 2, 3))
    assert metrics["dice"][0] == pytest.approx(2 * 48 / 128)
    assert metrics["dice"][1] == 0.0 and metrics["hd95_mm"][1] == pytest.approx(4 * 2.5)
    assert metrics["dice"][2] is None  # class 3: absent from both
    assert case_metrics(predicted, target, 4, (1, 1, 1), labelled=(2,))["dice"][0] is None
    regions = region_metrics(predicted, target, {"1 or 2": (1, 2), "3": (3,)}, (1, 1, 1))
    assert regions["dice"][0] == pytest.approx(2 * 48 / 130) and regions["dice"][1] is None
    summary = summarise([metrics, case_metrics(target, target, 4, (1, 1, 1))])
    assert summary["dice"]["mean_per_class"][:2] == [pytest.approx((0.75 + 1) / 2), 0.5]


def test_patch_training_writes_a_run_that_predicts_on_the_input_grid(
    decathlon: Path, tmp_path: Path, capsys
):
    """A few steps on the real OpenKBP cases, resumed once, then `predict` on its images."""
    run = tmp_path / "run"
    common = ["--data", str(decathlon), "--weights", "unet3d_openct_small", "--output", str(run)]
    common += [
        "--spacing",
        "6",
        "6",
        "6",
        "--patch-size",
        "32",
        "32",
        "32",
        "--validate-every",
        "2",
    ]
    assert main(["finetune-volumes", *common, "--steps", "2"]) == 0
    assert main(["finetune-volumes", *common, "--steps", "4"]) == 1  # no silent overwrite
    assert "holds a run already" in capsys.readouterr().err
    assert main(["finetune-volumes", *common, "--steps", "4", "--resume", "--lr", "0.1"]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main(["finetune-volumes", *common, "--steps", "4", "--resume"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert [v["step"] for v in results["history"]["validations"]] == [2, 4]
    assert len(results["history"]["losses"]) == 4
    (test_case,) = results["splits"]["test"]
    per_class = results["test"]["cases"][test_case]["dice"]
    assert len(per_class) == 7 and all(v is None or 0 <= v <= 1 for v in per_class)
    assert (run / "example.png").stat().st_size > 10_000
    assert read_metadata(run / "model.safetensors").tensor_digest
    cached = sorted((run / "cache").glob("*.pt"))  # each training case decoded once, kept
    assert 1 <= len(cached) <= 3 and "image" in torch.load(cached[0], weights_only=False)
    out = tmp_path / "predicted"
    assert (
        main(
            [
                "predict",
                "--run",
                str(run),
                "--input",
                str(decathlon / "imagesTr"),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    for image in sorted((decathlon / "imagesTr").glob("*.nii.gz")):
        predicted = sitk.ReadImage(str(out / image.name))
        assert Geometry.of(predicted) == Geometry.of(sitk.ReadImage(str(image)))
        assert sitk.GetArrayFromImage(predicted).max() < 8
    for subject in ("s0001", "s0002"):  # TotalSegmentator-style: every scan is ct.nii.gz
        (tmp_path / "subjects" / subject).mkdir(parents=True)
        shutil.copy(
            decathlon / "imagesTr" / "pt_4.nii.gz", tmp_path / "subjects" / subject / "ct.nii.gz"
        )
    subjects = ["predict", "--run", str(run), "--input", str(tmp_path / "subjects")]
    assert main([*subjects, "--output", str(out)]) == 0
    assert (out / "s0001_ct.nii.gz").is_file() and (out / "s0002_ct.nii.gz").is_file()


def test_the_brats_protocol_reports_the_tumour_regions(tmp_path: Path):
    """Three BraTS-layout cases made of real CT and real labels (organs as tumour labels)."""
    root = tmp_path / "brats"
    for patient in ("pt_3", "pt_4", "pt_13"):
        case = root / patient
        case.mkdir(parents=True)
        ct = sitk.ReadImage(str(OPENKBP / "images" / f"{patient}.nii.gz"), sitk.sitkFloat32)
        for sequence, image in {"t1": ct, "t1ce": -ct, "t2": ct * 2, "flair": ct + 5}.items():
            sitk.WriteImage(image, str(case / f"{patient}_{sequence}.nii.gz"))
        organs = sitk.GetArrayFromImage(
            sitk.ReadImage(str(OPENKBP / "labels" / f"{patient}.nii.gz"))
        )
        tumour = np.select([organs == 1, organs == 2, organs >= 3], [1, 2, 4], 0).astype(np.uint8)
        seg = sitk.GetImageFromArray(tumour)
        seg.CopyInformation(ct)
        sitk.WriteImage(seg, str(case / f"{patient}_seg.nii.gz"))
    run = tmp_path / "run"
    arguments = ["finetune-volumes", "--data", str(root), "--protocol", "brats2018"]
    arguments += [
        "--output",
        str(run),
        "--spacing",
        "8",
        "8",
        "8",
        "--patch-size",
        "16",
        "16",
        "16",
    ]
    arguments += ["--steps", "2"]
    assert main(arguments) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["regions"]["names"] == [
        "whole tumour",
        "tumour core",
        "enhancing tumour",
    ]
    (case,) = results["test"]["regions"]["cases"].values()
    assert len(case["dice"]) == 3 and all(v is None or 0 <= v <= 1 for v in case["dice"])
    stored = results["config"]["preprocessing"]
    assert stored["modality"] == "mri" and stored["percentiles"] == [0.0, 100.0]
    assert results["network"]["in_channels"] == 4 and results["classes"][4] == "enhancing tumour"


def test_classification_of_real_size_volumes_of_different_sizes(tmp_path: Path):
    """Real CTs of three grids (128^3 head and neck, 122 x 101 x 30 abdomen, chest) in one CSV."""
    chest = ABDOMEN_CT.parent / "chest_ct.nii.gz"
    files = [*sorted((OPENKBP / "images").glob("*.nii.gz")), ABDOMEN_CT, chest]
    rows = [("train", 0, 0), ("train", 5, 1), ("train", 1, 0), ("train", 6, 1)]
    rows += [("val", 2, 0), ("val", 5, 1), ("test", 3, 0), ("test", 6, 1)]
    table = tmp_path / "volumes.csv"
    table.write_text(
        "\n".join(
            ["image,label,split", *(f"{files[i]},{label},{split}" for split, i, label in rows)]
        )
    )
    with pytest.raises(DataError, match="differ in size"):
        load_dataset(table, spatial_dims=3, segmentation=False)
    dataset = load_dataset(table, 3, False, spacing=(4.0, 4.0, 4.0), volume_size=(48, 48, 32))
    assert dataset.splits["train"].images.shape == (4, 1, 48, 48, 32)
    output = tmp_path / "run"
    arguments = [
        "finetune",
        "--task",
        "classify3d",
        "--data",
        str(table),
        "--weights",
        "unet3d_openct_small",
    ]
    arguments += ["--spacing", "4", "4", "4", "--volume-size", "48", "48", "32", "--epochs", "1"]
    assert main([*arguments, "--batch-size", "2", "--output", str(output)]) == 0
    results = json.loads((output / "results.json").read_text())
    assert (
        results["data"]["image_shape"] == [1, 48, 48, 32]
        and 0 <= results["metrics"]["test"]["auc"] <= 1
    )
