"""Frozen-encoder probe for classification: logistic regression on pooled encoder features.

What does the pretrained encoder's global feature already separate, without fine-tuning?
Every AdrenalMNIST3D volume goes through the frozen encoder once (eval mode, average
pooling); for each label fraction and seed a multinomial logistic regression is fitted to
convergence on the standardised features of that training subset (full batch, L-BFGS).
Its L2 penalty is chosen among a few values by the loss on the validation split, never on
the test split. A probe must be fitted to convergence to measure the features rather than
the optimiser: a linear head trained for a few epochs of small Adam steps stays close to
its random start, and every set of weights then scores about the same at every fraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..finetune.datasets import load_dataset
from ..finetune.sampling import stratified_subset
from ..finetune.tasks import TASKS
from ..models.padding import pad_to_multiple

TASK = TASKS["classify3d"]
BATCH = 64


@dataclass(frozen=True)
class ClassificationProbeSettings:
    penalties: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    """L2 penalties (on the mean loss) tried; the one with the lowest validation loss wins."""
    max_iterations: int = 200


@torch.no_grad()
def pooled_features(encoder: nn.Module, images: np.ndarray) -> Tensor:
    """(N, C) average-pooled features of ``images`` (N, 1, D, H, W), zero-padded to the
    encoder's stride as fine-tuning pads them."""
    stride = int(encoder.feature_info.reduction()[-1])
    prepared = torch.from_numpy(TASK.prepare_images(images))
    return torch.cat(
        [encoder(pad_to_multiple(batch, stride)[0]) for batch in prepared.split(BATCH)]
    )


def fit_logistic(
    x: Tensor, y: Tensor, num_classes: int, penalty: float, iterations: int
) -> nn.Linear:
    """The L2-penalised multinomial logistic regression of ``y`` on ``x``, by L-BFGS."""
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)  # a convex problem: start from the uniform prediction
    optimizer = torch.optim.LBFGS(
        linear.parameters(), max_iter=iterations, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(x), y) + penalty * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return linear.eval()


def probe_classification(
    encoder: nn.Module,
    adrenal: str | Path,
    fractions: tuple[float, ...],
    seeds: tuple[int, ...],
    settings: ClassificationProbeSettings,
) -> list[dict[str, Any]]:
    """One record (test AUC and accuracy, the penalty chosen) per label fraction and seed."""
    dataset = load_dataset(adrenal, TASK.spatial_dims, TASK.segmentation)
    encoder = encoder.eval()
    features = {name: pooled_features(encoder, s.images) for name, s in dataset.splits.items()}
    records = []
    for fraction in fractions:
        for seed in seeds:
            subset = stratified_subset(dataset.splits["train"].targets, fraction, seed)
            fitted = _fit_on_subset(features, dataset.splits, subset, dataset.num_classes, settings)
            records.append(
                {"labels": fraction, "seed": seed, "train_samples": len(subset), **fitted}
            )
    return records


def _fit_on_subset(
    features: dict[str, Tensor],
    splits: dict[str, Any],
    subset: np.ndarray,
    num_classes: int,
    settings: ClassificationProbeSettings,
) -> dict[str, Any]:
    """Fit every penalty on the training ``subset``, keep the best on validation, test it."""
    train = features["train"][subset]
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    x = {name: (f - mean) / std for name, f in features.items()}
    y = {name: torch.from_numpy(s.targets).long() for name, s in splits.items()}
    fits = [
        fit_logistic(
            x["train"][subset], y["train"][subset], num_classes, penalty, settings.max_iterations
        )
        for penalty in settings.penalties
    ]
    with torch.no_grad():
        val_loss = torch.stack([F.cross_entropy(fit(x["val"]), y["val"]) for fit in fits])
        best = int(val_loss.argmin())
        probabilities = fits[best](x["test"]).softmax(dim=1).numpy()
    return {
        **TASK.metrics(probabilities, splits["test"].targets, num_classes),
        "penalty": settings.penalties[best],
        "val_loss": float(val_loss[best]),
    }
