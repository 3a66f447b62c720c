"""Fine-tuning: the three tasks end to end on real sample data, metrics, label fractions,
pretrained-versus-scratch networks, and the errors bad data gets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import SMALL_WIDTHS, small_network

from pcrlv2_hub.cli import main
from pcrlv2_hub.errors import DataError
from pcrlv2_hub.finetune import TASKS, FinetuneConfig, TrainingSettings, finetune
from pcrlv2_hub.finetune.datasets import load_dataset
from pcrlv2_hub.finetune.losses import dice_ce_loss
from pcrlv2_hub.finetune.metrics import accuracy, auc, dice_per_class
from pcrlv2_hub.finetune.networks import build_network
from pcrlv2_hub.finetune.sampling import stratified_subset
from pcrlv2_hub.models.encoders import encoder_state_dict
from pcrlv2_hub.models.registry import build_model
from pcrlv2_hub.weights_file import read_weights, save_weights

SAMPLES = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data"
ADRENAL = SAMPLES / "adrenalmnist3d.npz"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small pretrained-format 3D file whose every encoder tensor is off its initial value."""
    model = small_network(seed=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return save_weights(path, model.state_dict(), "pcrlv2_unet3d", {"widths": list(SMALL_WIDTHS)})


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2D encoder file (the official 2D checkpoint's layout), every tensor off its init."""
    torch.manual_seed(2)
    encoder = build_model("pcrlv2_resnet18_encoder")
    with torch.no_grad():
        for tensor in encoder.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01)
    path = tmp_path_factory.mktemp("weights") / "resnet.safetensors"
    return save_weights(path, encoder.state_dict(), "pcrlv2_resnet18_encoder", {})


@pytest.fixture(scope="module")
def xray_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 24 sample X-rays laid out as train (8 + 8), val (2 + 2) and test (2 + 2)."""
    root = tmp_path_factory.mktemp("chestxray")
    for class_dir in sorted((SAMPLES / "chestxray").iterdir()):
        for index, image in enumerate(sorted(class_dir.glob("*.png"))):
            split = "train" if index < 8 else "valid" if index < 10 else "test"
            (root / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, root / split / class_dir.name / image.name)
    return root


@pytest.fixture(scope="module")
def ct_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Image/mask NIfTI pairs: 20^3 blocks of the real chest CT, masks = voxels above 150 HU
    (contrast-filled vessels and bone). A threshold target, honest about what it is: it
    exercises the segmentation plumbing, it is not a clinical label."""
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "chest_ct.nii.gz")))
    root = tmp_path_factory.mktemp("ct_pairs")
    corners = [(40, 30, 30), (40, 50, 50), (60, 30, 50), (60, 50, 30), (70, 40, 40), (50, 40, 60)]
    splits = ["train"] * 4 + ["val", "test"]
    for index, ((z, y, x), split) in enumerate(zip(corners, splits, strict=True)):
        block = ct[z : z + 20, y : y + 20, x : x + 20]
        for kind, array in (("images", block), ("masks", (block > 150).astype(np.uint8))):
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(
                sitk.GetImageFromArray(array), str(root / split / kind / f"{index}.nii.gz")
            )
    return root


def _run_cli(*arguments: str) -> int:
    return main(["finetune", *arguments])


# --- the three tasks end to end ---------------------------------------------------------


def test_classify3d_end_to_end_on_adrenalmnist(tiny_weights: Path, tmp_path: Path):
    code = _run_cli(
        "--task", "classify3d", "--data", str(ADRENAL), "--weights", str(tiny_weights),
        "--label-fraction", "0.05", "--seed", "3", "--epochs", "1", "--output", str(tmp_path),
    )  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"]["samples"] == {"train": 59, "val": 98, "test": 298}
    assert results["data"]["class_counts"]["train"] == [46, 13]  # 5 % of 929 and of 259
    assert results["network_stride"] == 8  # 28^3 was padded to 32^3
    assert results["weights"]["pretrained"] and len(results["weights"]["sha256"]) == 64
    for split in ("train", "val", "test"):
        metrics = results["metrics"][split]
        assert 0 <= metrics["auc"] <= 1 and 0 <= metrics["accuracy"] <= 1
        assert np.isfinite(metrics["loss"])
    assert results["epochs_run"] == len(results["history"]) == 1
    assert results["train_seconds"] > 0


def test_classify2d_end_to_end_on_chest_xrays(xray_folders: Path, tmp_path: Path):
    code = _run_cli(
        "--task", "classify2d", "--data", str(xray_folders), "--weights", "scratch",
        "--epochs", "1", "--batch-size", "8", "--output", str(tmp_path),
    )  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"]["image_shape"] == [3, 64, 64]  # grayscale copied to RGB
    assert results["data"]["class_counts"]["val"] == [2, 2]
    assert results["weights"] == {
        "name": "resnet18_chestxray", "weights": None, "pretrained": False, "sha256": None
    }  # fmt: skip
    assert 0 <= results["metrics"]["test"]["auc"] <= 1


def test_segment3d_end_to_end_on_ct_pairs(ct_pairs: Path, tiny_weights: Path, tmp_path: Path):
    code = _run_cli(
        "--task", "segment3d", "--data", str(ct_pairs), "--weights", str(tiny_weights),
        "--epochs", "1", "--batch-size", "2", "--output", str(tmp_path),
    )  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"]["image_shape"] == [1, 20, 20, 20]  # padded to 24^3 and cropped back
    assert "pretrained tensors loaded" in results["transfer_report"]
    test = results["metrics"]["test"]
    assert len(test["dice_per_class"]) == 2
    assert 0 <= test["mean_dice"] <= 1


def test_a_csv_of_volumes_gives_windowed_volumes_and_their_labels(ct_pairs: Path, tmp_path: Path):
    for image in ct_pairs.glob("*/images/*.nii.gz"):
        shutil.copy(image, tmp_path / f"ct{image.name}")
    rows = [("train", 0, 0), ("train", 1, 1), ("train", 2, 0), ("train", 3, 1)]
    rows += [("valid", 4, 0), ("valid", 5, 1), ("test", 0, 1), ("test", 5, 0)]
    table = ["image,label,split", *(f"ct{i}.nii.gz,{label},{split}" for split, i, label in rows)]
    (tmp_path / "labels.csv").write_text("\n".join(table))
    dataset = load_dataset(tmp_path, spatial_dims=3, segmentation=False)
    assert dataset.splits["train"].targets.tolist() == [0, 1, 0, 1]
    assert dataset.splits["val"].targets.tolist() == [0, 1]
    images = dataset.splits["test"].images
    assert images.shape == (2, 1, 20, 20, 20) and 0 <= images.min() < images.max() <= 1


# --- metrics -----------------------------------------------------------------------------


def _two_columns(positive: list[float]) -> np.ndarray:
    return np.stack([1 - np.array(positive), np.array(positive)], axis=1)


def test_auc_matches_hand_counted_pairs():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ranked right
    assert auc(np.array([0, 0, 1, 1]), _two_columns([0.1, 0.4, 0.35, 0.8])) == 0.75
    # a tie counts one half: pairs (0.5 vs 0.5) -> 0.5, (0.5 vs 0.2) -> 1
    assert auc(np.array([1, 0, 0]), _two_columns([0.5, 0.5, 0.2])) == 0.75
    assert np.isnan(auc(np.array([1, 1]), _two_columns([0.3, 0.4])))
    probabilities = np.array([[0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    # positives 0.7 and 0.1 against negatives 0.4 and 0.8: only 0.7 > 0.4 is ranked right
    assert auc(np.array([1, 0, 0, 1]), probabilities) == 0.25
    assert accuracy(np.array([1, 0, 0, 1]), probabilities) == 0.5


def test_multiclass_auc_is_the_macro_average_of_one_vs_rest():
    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7], [0.3, 0.5, 0.2]])
    # class 0: 0.6 above 0.5, 0.1, 0.3 -> 1; class 1: 0.4 above 0.3, 0.2, not 0.5 -> 2/3;
    # class 2: (0.7, 0.2) vs (0.1, 0.1): 4 of 4 -> 1
    assert auc(labels, probabilities) == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert accuracy(labels, probabilities) == 0.5


def test_dice_per_class_matches_hand_counts():
    predicted = np.array([[0, 1], [1, 0]])
    target = np.array([[0, 1], [0, 0]])
    dice = dice_per_class(predicted, target, num_classes=3)
    # class 0: overlap 2, sizes 2 + 3 -> 0.8; class 1: overlap 1, sizes 2 + 1; class 2: absent
    assert dice[:2] == [0.8, pytest.approx(2 / 3)]
    assert np.isnan(dice[2])


def test_dice_ce_loss_is_zero_for_a_confident_perfect_prediction():
    target = torch.tensor([[[0, 1], [1, 2]]])
    logits = 50.0 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert dice_ce_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_ce_loss(-logits, target).item() > 1.0


# --- label fractions ---------------------------------------------------------------------


def test_label_fraction_keeps_the_class_balance_and_is_seeded():
    labels = np.load(ADRENAL)["train_labels"].ravel()  # 929 normal, 259 mass
    chosen = stratified_subset(labels, 0.1, seed=7)
    assert np.bincount(labels[chosen]).tolist() == [93, 26]
    assert np.array_equal(chosen, stratified_subset(labels, 0.1, seed=7))
    assert not np.array_equal(chosen, stratified_subset(labels, 0.1, seed=8))
    assert len(np.unique(chosen)) == len(chosen)
    rare = np.array([0] * 50 + [1] * 3)
    assert np.bincount(rare[stratified_subset(rare, 0.05, seed=0)]).tolist() == [2, 1]


# --- networks: pretrained versus scratch ---------------------------------------------------


def _assert_differ_in_the_encoder_only(task: str, weights: str, encoder_state: dict) -> None:
    """Built with one seed, ``weights`` and ``scratch:weights`` differ exactly in the encoder,
    and the pretrained encoder holds ``encoder_state`` bit for bit."""
    pretrained = build_network(TASKS[task], weights, 2, None, seed=5).state_dict()
    scratch = build_network(TASKS[task], f"scratch:{weights}", 2, None, seed=5).state_dict()
    assert pretrained.keys() == scratch.keys()
    prefix = "network.encoder." + ("encoder." if task.startswith("classify") else "")
    encoder = {k for k in pretrained if k.startswith(prefix)}
    assert {k.removeprefix(prefix) for k in encoder} == encoder_state.keys()
    for key in encoder:
        assert torch.equal(pretrained[key], encoder_state[key.removeprefix(prefix)]), key
        if pretrained[key].dim() > 1:  # every kernel is drawn anew in scratch
            assert not torch.equal(pretrained[key], scratch[key]), key
    for key in pretrained.keys() - encoder:
        assert torch.equal(pretrained[key], scratch[key]), key


@pytest.mark.parametrize(
    ("task", "weights"),
    [
        ("classify3d", "tiny_weights"),
        ("segment3d", "tiny_weights"),
        ("classify2d", "resnet_weights"),
    ],
)
def test_scratch_and_pretrained_files_differ_in_the_encoder_only(task, weights, request):
    path = request.getfixturevalue(weights)
    source, metadata = read_weights(path)
    _assert_differ_in_the_encoder_only(
        task, str(path), encoder_state_dict(metadata.architecture, source)
    )


def test_scratch_and_pretrained_zoo_models_differ_in_the_encoder_only(published):
    """The zoo route: a model downloaded from the (loopback) Hub by name."""
    state = encoder_state_dict("pcrlv2_unet3d", published.model.state_dict())
    _assert_differ_in_the_encoder_only("classify3d", published.name, state)


def test_linear_probe_leaves_the_encoder_untouched(tiny_weights: Path):
    config = FinetuneConfig(
        task="classify3d",
        data=str(ADRENAL),
        weights=str(tiny_weights),
        label_fraction=0.02,
        training=TrainingSettings(epochs=2, lr=0.1, linear_probe=True),
    )
    run = finetune(config)
    source, _ = read_weights(tiny_weights)
    encoder = run.model.encoder.encoder.state_dict()
    assert encoder.keys() == {k for k in source if "down_tr" in k}
    assert all(torch.equal(encoder[k], source[k]) for k in encoder)  # BN statistics too
    untrained = build_network(TASKS["classify3d"], str(tiny_weights), 2, None, seed=0)
    assert not torch.equal(run.model.network.head.weight, untrained.network.head.weight)
    # same seed, same data: a second run reproduces the first exactly
    assert finetune(config).results["metrics"] == run.results["metrics"]


# --- bad data ----------------------------------------------------------------------------


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_missing_split_is_a_data_error(tmp_path: Path):
    with np.load(ADRENAL) as data:
        arrays = {k: data[k][:20] for k in data.files if not k.startswith("val")}
    path = _npz(tmp_path / "no_val.npz", **arrays)
    with pytest.raises(DataError, match="val are missing"):
        load_dataset(path, spatial_dims=3, segmentation=False)
    code = _run_cli("--task", "classify3d", "--data", str(path), "--output", str(tmp_path / "o"))
    assert code == 1
    assert not (tmp_path / "o").exists()


def test_labels_of_the_wrong_shape_are_a_data_error(tmp_path: Path):
    images = np.zeros((4, 8, 8, 8), np.uint8)
    arrays = {f"{s}_images": images for s in ("train", "val", "test")}
    arrays |= {f"{s}_labels": np.zeros((4, 2)) for s in ("train", "val", "test")}
    with pytest.raises(DataError, match=r"labels of shape \(4, 2\)"):
        load_dataset(_npz(tmp_path / "multi.npz", **arrays), spatial_dims=3, segmentation=False)


def test_images_and_masks_of_different_sizes_are_a_data_error(tmp_path: Path):
    arrays = {f"{s}_images": np.zeros((2, 8, 8, 8), np.uint8) for s in ("train", "val", "test")}
    arrays |= {f"{s}_masks": np.zeros((2, 8, 8, 6), np.uint8) for s in ("train", "val", "test")}
    with pytest.raises(DataError, match="differ in size"):
        load_dataset(_npz(tmp_path / "seg.npz", **arrays), spatial_dims=3, segmentation=True)


def test_pairs_with_a_missing_mask_and_flat_folders_are_data_errors(ct_pairs: Path, tmp_path: Path):
    broken = tmp_path / "pairs"
    shutil.copytree(ct_pairs, broken)
    (broken / "val" / "masks" / "4.nii.gz").unlink()
    with pytest.raises(DataError, match=r"lacks the masks of \['4.nii.gz'\]"):
        load_dataset(broken, spatial_dims=3, segmentation=True)
    with pytest.raises(DataError, match="no train/val/test folders"):
        load_dataset(SAMPLES / "chestxray", spatial_dims=2, segmentation=False)


def test_channel_mismatch_asks_for_in_channels(tiny_weights: Path, tmp_path: Path):
    with np.load(ADRENAL) as data:
        arrays = {k: data[k][:30] for k in data.files}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.stack([arrays[f"{split}_images"]] * 4, axis=1)
    config = FinetuneConfig(
        task="classify3d",
        data=str(_npz(tmp_path / "four.npz", **arrays)),
        weights=str(tiny_weights),
        training=TrainingSettings(epochs=1),
    )
    with pytest.raises(DataError, match="--in-channels 4"):
        finetune(config)
    run = finetune(dataclasses.replace(config, in_channels=4))
    assert run.results["data"]["image_shape"] == [4, 28, 28, 28]
