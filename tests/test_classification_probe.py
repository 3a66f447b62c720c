"""The AdrenalMNIST3D frozen-encoder probe: fitted to convergence, penalty chosen on val."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_WIDTHS, small_network

import pcrlv2_hub
from pcrlv2_hub.benchmark.classification_probe import (
    ClassificationProbeSettings,
    fit_logistic,
    pooled_features,
    probe_classification,
)
from pcrlv2_hub.finetune.datasets import load_dataset
from pcrlv2_hub.publish import write_release

ADRENAL = Path(pcrlv2_hub.__file__).parent / "sample_data" / "adrenalmnist3d.npz"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> torch.nn.Module:
    """The pooled encoder of a small PCRLv2 network, loaded as a user loads weights."""
    release = write_release(
        tmp_path_factory.mktemp("release"),
        small_network(0).state_dict(),
        "pcrlv2_unet3d",
        {"widths": list(SMALL_WIDTHS)},
        {},
        name="small",
    )
    return pcrlv2_hub.load_encoder(weights=release.weights_path, pool="avg")


def test_logistic_regression_reaches_its_optimum(encoder):
    """At the returned weights the penalised loss has no gradient left: the probe measures
    the features, not how far an optimiser got."""
    images = load_dataset(ADRENAL, 3, False).splits["train"]
    x = pooled_features(encoder, images.images[:300])
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    y = torch.from_numpy(images.targets[:300]).long()
    linear = fit_logistic(x, y, 2, penalty=1e-2, iterations=200)
    linear.requires_grad_(True)
    loss = F.cross_entropy(linear(x), y) + 1e-2 * linear.weight.square().sum()
    gradients = torch.autograd.grad(loss, list(linear.parameters()))
    assert max(g.abs().max().item() for g in gradients) < 1e-3
    assert loss.item() < F.cross_entropy(torch.zeros(len(y), 2), y).item() - 0.01


def test_probe_records_every_fraction_and_seed(encoder):
    settings = ClassificationProbeSettings(penalties=(1e-3, 1.0), max_iterations=50)
    records = probe_classification(encoder, ADRENAL, (0.05, 1.0), (0, 1), settings)
    assert [(r["labels"], r["seed"]) for r in records] == [(0.05, 0), (0.05, 1), (1.0, 0), (1.0, 1)]
    assert records[0]["train_samples"] < records[2]["train_samples"] == 1188
    assert records[0]["train_samples"] != 0 and all(0 <= r["auc"] <= 1 for r in records)
    assert all(r["penalty"] in settings.penalties for r in records)
    # All labels: both seeds train on the same samples, so they give the same probe.
    assert records[2]["auc"] == records[3]["auc"]
