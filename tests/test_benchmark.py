"""The transfer benchmark on real OpenKBP CT and AdrenalMNIST3D: its parts, then end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_WIDTHS, small_network

import pcrlv2_hub
from pcrlv2_hub.benchmark.jobs import training_cases
from pcrlv2_hub.benchmark.openkbp import (
    NUM_CLASSES,
    body_roi,
    load_cases,
    paste,
    read_full_label,
    read_split,
)
from pcrlv2_hub.benchmark.probe import Hypercolumns, ProbeSettings, fit_probe
from pcrlv2_hub.benchmark.report import FIGURE, REPORT
from pcrlv2_hub.benchmark.runner import RESULTS
from pcrlv2_hub.benchmark.segmentation import PatchSampler, SegmentationSettings, organ_dice
from pcrlv2_hub.cli import main
from pcrlv2_hub.finetune.losses import dice_ce_loss, partial_label_loss
from pcrlv2_hub.publish import write_release

OPENKBP = Path(__file__).parent / "data" / "openkbp"
SPLIT = OPENKBP / "split.json"
ADRENAL = Path(pcrlv2_hub.__file__).parent / "sample_data" / "adrenalmnist3d.npz"
ROI = (64, 64, 128)


@pytest.fixture(scope="module")
def cases():
    split = read_split(SPLIT)
    return {
        case.name: case
        for case in load_cases(OPENKBP, (*split.train, *split.test), split.excluded, ROI)
    }


def test_shipped_split_keeps_test_patients_apart():
    split = read_split()
    assert len(split.test) == 33 and all(int(n[3:]) > 200 for n in split.test)
    assert not set(split.test) & set(split.train) | set(split.val) & set(split.train)
    pretraining = (Path(__file__).parents[1] / "benchmarks/openct/pretraining_data.txt").read_text()
    assert not [name for name in split.test if f"images/{name}.nii.gz" in pretraining]
    assert split.excluded == {"pt_215": (2,), "pt_216": (2,)}


def test_cases_are_cropped_normalised_and_partially_labelled(cases):
    partial, excluded, full = cases["pt_3"], cases["pt_215"], cases["pt_4"]
    assert full.image.shape == (1, *ROI) and full.label.shape == ROI
    assert abs(full.image.mean()) < 1e-4 and abs(full.image.std() - 1) < 1e-3
    assert partial.labelled.tolist() == [True] * 5 + [False] * 3  # organs 1-4 contoured
    assert full.fully_labelled and not partial.fully_labelled
    assert not excluded.labelled[2] and not (excluded.label == 2).any()  # flagged cord
    whole = read_full_label(OPENKBP, excluded)
    assert whole.shape == (128, 128, 128) and not (whole == 2).any()
    assert (paste(excluded.label, excluded)[excluded.roi] == excluded.label).all()
    # The ROI follows the body, not the labels: a shifted body moves it by the same amount.
    body = np.full((128, 128, 128), -1000.0, np.float32)
    body[30:70, 50:90, :] = 40.0
    moved = np.roll(body, 10, axis=0)
    assert body_roi(moved, ROI)[0].start == body_roi(body, ROI)[0].start + 10


def test_training_patients_are_nested_and_fully_contoured(cases):
    pool = [cases[name] for name in ("pt_3", "pt_4", "pt_13")]
    one, two = training_cases(pool, 1, 0), training_cases(pool, 2, 0)
    assert set(c.name for c in one) <= set(c.name for c in two) == {"pt_4", "pt_13"}
    assert training_cases(pool, "all", 0) == pool
    with pytest.raises(pcrlv2_hub.PCRLv2HubError, match="only 2 with every organ"):
        training_cases(pool, 3, 0)


def test_partial_label_loss():
    torch.manual_seed(0)
    logits = torch.randn(1, NUM_CLASSES, 4, 4, 4)
    target = torch.randint(0, 5, (1, 4, 4, 4))  # organs 1-4 drawn, 5-7 not
    everything = torch.ones(1, NUM_CLASSES, dtype=torch.bool)
    assert torch.allclose(
        partial_label_loss(logits, target, everything), dice_ce_loss(logits, target)
    )
    labelled = everything.clone()
    labelled[0, 5:] = False
    # Moving probability between background and an organ that was not drawn changes
    # nothing where the label says 0; calling it background (the full loss) would.
    swapped = logits.clone()
    swapped[0, [0, 6]] = logits[0, [6, 0]]
    background = (target == 0)[:, None]
    swapped = torch.where(background, swapped, logits)
    assert torch.allclose(
        partial_label_loss(logits, target, labelled), partial_label_loss(swapped, target, labelled)
    )
    assert not torch.allclose(dice_ce_loss(logits, target), dice_ce_loss(swapped, target))


def test_organ_dice_by_hand():
    label = np.zeros((4, 4, 4), np.uint8)
    label[:2, :2, :2] = 1  # 8 voxels of organ 1
    label[3, 3, 3] = 5  # organ 5: 1 voxel
    prediction = np.zeros_like(label)
    prediction[:2, :2, :1] = 1  # 4 of the 8
    prediction[0, 3, 3] = 2  # a false positive of organ 2, which the label lacks
    labelled = np.array([True, True, True, True, True, True, False, False])
    dice = organ_dice(prediction, label, labelled)
    assert dice[0] == pytest.approx(2 * 4 / (4 + 8))
    assert dice[4] == 0.0  # organ 5 missed
    assert np.isnan(dice[1])  # organ 2 labelled but absent from the map: undefined
    assert np.isnan(dice[5]) and np.isnan(dice[6])  # not contoured: left out


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_foreground_share_of_patches(cases, share):
    case = cases["pt_4"]
    settings = SegmentationSettings(patch_size=(16, 16, 16), batch_size=50, foreground_share=share)
    images, labels, labelled = PatchSampler([case], settings, seed=0).batch()
    centres = labels[:, 8, 8, 8]
    on_organs = float((centres > 0).float().mean())
    organ_fraction = float((case.label > 0).mean())
    assert images.shape == (50, 1, 16, 16, 16) and labelled.shape == (50, NUM_CLASSES)
    if share == 1.0:
        assert on_organs >= 0.9  # centres near the border are shifted to fit the patch
        present = set(centres[centres > 0].tolist())
        assert len(present) >= 5  # organs equally likely, not the largest one only
    else:
        assert on_organs <= organ_fraction + 0.1


def test_probe_dense_prediction_equals_the_voxel_classifier(cases, weights):
    encoder = pcrlv2_hub.load_encoder(weights=weights)
    hypercolumns = Hypercolumns(encoder, voxels_per_case=300)
    probe = fit_probe(hypercolumns, [cases["pt_4"]], ProbeSettings(steps=20), seed=0)
    test = cases["pt_201"]
    dense = probe.predict(hypercolumns.features([test])[0], hypercolumns.strides)
    voxels = np.stack([np.random.default_rng(1).integers(n, size=500) for n in ROI], axis=1)
    columns = []
    for feature, stride in zip(hypercolumns.features([test])[0], hypercolumns.strides, strict=True):
        x, y, z = torch.from_numpy(voxels // stride).T
        columns.append(feature[:, x, y, z].T)
    with torch.no_grad():
        per_voxel = probe(torch.cat(columns, dim=1)).argmax(dim=1).numpy()
    assert (dense[tuple(voxels.T)] == per_voxel).mean() > 0.99  # float ties aside


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A small PCRLv2 network's weights in a pcrlv2_hub safetensors file."""
    release = write_release(
        tmp_path / "release",
        small_network(1).state_dict(),
        "pcrlv2_unet3d",
        {"widths": list(SMALL_WIDTHS)},
        {},
        name="small",
    )
    return release.weights_path


def test_benchmark_command_end_to_end(tmp_path: Path, weights: Path, capsys):
    output = tmp_path / "bench"
    argv = ["benchmark", "--protocol", "tiny", "--openkbp", str(OPENKBP), "--split", str(SPLIT),
            "--adrenal", str(ADRENAL), "--weights", f"pcrlv2={weights}",
            "--weights", f"scratch=scratch:{weights}", "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((output / RESULTS).read_text())
    tasks = [(r["task"], r["weights"]) for r in results["records"]]
    for label in ("pcrlv2", "scratch"):
        assert tasks.count(("segmentation", label)) == 2  # 1 and all patients, one seed
        assert tasks.count(("segmentation_probe", label)) == 2
        assert tasks.count(("classification", label)) == 1
        assert tasks.count(("classification_probe", label)) == 1
    for record in results["records"]:
        if record["task"].startswith("segmentation"):
            assert 0 <= record["mean_dice"] <= 1 and record["test_cases"] == 2
            assert len(record["dice_per_organ"]) == 7
        else:
            assert 0 <= record["auc"] <= 1
    assert results["weights"]["scratch"]["pretrained"] is False
    report = (output / REPORT).read_text()
    assert "## OpenKBP organs, fine-tuned: mean dice" in report and "| pcrlv2 |" in report
    assert "## Goal:" in report and (output / FIGURE).stat().st_size > 10_000
    assert "pcrlv2 vs scratch, 1 patients" in capsys.readouterr().out

    # Run again: everything is already there, nothing is recomputed.
    assert main(argv) == 0
    again = json.loads((output / RESULTS).read_text())
    assert again["records"] == results["records"]

    # Another protocol into the same folder is refused, not mixed in.
    other = replace(pcrlv2_hub.benchmark.PROTOCOLS["tiny"], seeds=(1,))
    with pytest.raises(pcrlv2_hub.PCRLv2HubError, match="another protocol"):
        pcrlv2_hub.benchmark.run_benchmark(
            other, [pcrlv2_hub.benchmark.WeightsSpec("x", str(weights))], output, adrenal=ADRENAL
        )


def test_only_the_splits_asked_for_are_evaluated():
    from pcrlv2_hub.finetune import FinetuneConfig

    with pytest.raises(pcrlv2_hub.InvalidInputError, match="name some of the splits"):
        FinetuneConfig(task="classify3d", data=str(ADRENAL), evaluated=("holdout",))


def test_cases_are_windowed_as_the_weights_were_pretrained(tmp_path: Path):
    from pcrlv2_hub.benchmark.jobs import intensity_window

    recipe = {"recipe": {"preprocessing": {"window": [-160.0, 240.0]}}}
    soft = write_release(
        tmp_path, small_network().state_dict(), "pcrlv2_unet3d",
        {"widths": list(SMALL_WIDTHS)}, recipe, name="soft",
    ).weights_path  # fmt: skip
    assert intensity_window(str(soft)) == (-160.0, 240.0)
    assert intensity_window(f"scratch:{soft}") == (-160.0, 240.0)  # the same input for both
    assert intensity_window("scratch:unet3d_luna") == (-1000.0, 1000.0)
    wide, narrow = (
        load_cases(OPENKBP, ["pt_4"], {}, ROI, w)[0] for w in ((-1000, 1000), (-160, 240))
    )
    # with a soft-tissue window bone (the mandible) is clipped to the top of the range
    bone = wide.label == 7
    clipped = [np.isclose(c.image[0][bone], c.image.max()).mean() for c in (narrow, wide)]
    assert clipped[0] > 0.7 > 0.5 > clipped[1]  # 82 % vs 32 % (teeth above 1000 HU)
