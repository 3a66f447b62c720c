"""The benchmark's units of work; each runs in a worker process and returns result records.

- ``segmentation``: fine-tune on N labelled patients (one seed), Dice on the test patients;
- ``segmentation_probe``: the frozen-encoder probe for every label count and seed of one
  set of weights at once (the encoder's features are shared between them);
- ``classification``: AdrenalMNIST3D fine-tuned with a label fraction (one seed);
- ``classification_probe``: logistic regression on the frozen encoder's pooled features,
  for every label fraction and seed of one set of weights at once.

Training patients: for N labelled patients, the first N of a seeded permutation of the
*fully contoured* training patients (a user who labels a few patients draws every organ),
so the sets are nested (1 of 2 of 5 of 10) at each seed; "all" is every training patient
with whatever it has contoured (the partial-label loss handles the rest).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .openkbp import HU_WINDOW, ORGANS, Case, load_cases, read_full_label, read_split
from .protocol import ALL, Protocol

SEGMENTATION = "segmentation"
SEGMENTATION_PROBE = "segmentation_probe"
CLASSIFICATION = "classification"
CLASSIFICATION_PROBE = "classification_probe"
TASK_ORDER = (SEGMENTATION_PROBE, SEGMENTATION, CLASSIFICATION, CLASSIFICATION_PROBE)


@dataclass(frozen=True)
class Job:
    task: str
    weights: str  # the label of a set of weights
    labels: int | str | float | None  # patients, "all", a fraction; None: all of them
    seed: int | None  # None: all seeds

    @property
    def key(self) -> str:
        return f"{self.task}/{self.weights}/{self.labels}/{self.seed}"


@dataclass(frozen=True)
class Context:
    """What every job needs to know; picklable, so it travels to the worker processes."""

    protocol: Protocol
    sources: dict[str, str]  # weights label -> --weights value
    openkbp: str | None
    split: str | None
    adrenal: str | None


def run_job(job: Job, context: Context) -> list[dict[str, Any]]:
    """Run ``job`` and return its records (one per label count and seed it covers)."""
    torch.set_num_threads(1)  # one core per worker: two workers beat two threads here
    started = time.perf_counter()
    if job.task == SEGMENTATION:
        records = [_segmentation(job, context)]
    elif job.task == SEGMENTATION_PROBE:
        records = _segmentation_probe(job, context)
    elif job.task == CLASSIFICATION_PROBE:
        records = _classification_probe(job, context)
    else:
        records = [_classification(job, context)]
    seconds = (time.perf_counter() - started) / len(records)
    return [{**r, "task": job.task, "weights": job.weights, "seconds": seconds} for r in records]


@dataclass(frozen=True)
class OpenKBPData:
    train: list[Case]
    test: list[Case]
    test_labels: list[np.ndarray]


@lru_cache(maxsize=2)
def openkbp_data(
    root: str, split: str | None, roi_size: tuple, test_cases: int | None, window: tuple
) -> OpenKBPData:
    """The training pool and the test patients, read once per worker process and window."""
    chosen = read_split(split)
    test_names = chosen.test[:test_cases] if test_cases else chosen.test
    train = load_cases(root, chosen.train, chosen.excluded, roi_size, window)
    test = load_cases(root, test_names, chosen.excluded, roi_size, window)
    return OpenKBPData(train, test, [read_full_label(root, case) for case in test])


def intensity_window(source: str) -> tuple[float, float]:
    """The HU window the weights were pretrained with (the network must see CT the way it
    learned it): from a file's recorded recipe or a zoo entry's input spec; a ``scratch:``
    source uses its architecture source's, so both sides of a comparison see the same
    input. Unknown: the paper's [-1000, 1000]."""
    from ..finetune.networks import weights_option
    from ..manifest import get_entry
    from ..weights_file import read_metadata

    option = weights_option(source, "unet3d_luna")
    window = None
    if option["weights"] and Path(option["weights"]).suffix == ".safetensors":
        recipe = read_metadata(option["weights"]).provenance.get("recipe", {})
        window = recipe.get("preprocessing", {}).get("window")
    elif option["name"] and not option["name"].startswith("hf-hub:"):
        window = get_entry(option["name"]).info["input"].get("intensity_window")
    return tuple(float(v) for v in window) if window else HU_WINDOW


def training_cases(pool: list[Case], count: int | str, seed: int) -> list[Case]:
    """The labelled patients of a run (see the module docstring)."""
    if count == ALL:
        return pool
    fully = [case for case in pool if case.fully_labelled]
    if count > len(fully):
        raise DataError(
            f"{count} labelled patients asked for, but the training split holds only "
            f"{len(fully)} with every organ contoured; lower the label counts."
        )
    order = np.random.default_rng(seed).permutation(len(fully))[:count]
    return [fully[i] for i in sorted(order)]


def _openkbp(context: Context, weights: str) -> OpenKBPData:
    protocol = context.protocol
    window = intensity_window(context.sources[weights])
    return openkbp_data(
        context.openkbp, context.split, tuple(protocol.roi_size), protocol.test_cases, window
    )


def _segmentation(job: Job, context: Context) -> dict[str, Any]:
    from .segmentation import evaluate, finetune_segmentation

    data = _openkbp(context, job.weights)
    cases = training_cases(data.train, job.labels, job.seed)
    model = finetune_segmentation(
        context.sources[job.weights], cases, context.protocol.segmentation, job.seed
    )
    dice = evaluate(model, data.test, data.test_labels, context.protocol.segmentation)
    return _dice_record(job.labels, job.seed, cases, dice)


def _segmentation_probe(job: Job, context: Context) -> list[dict[str, Any]]:
    from .openkbp import paste
    from .probe import BATCH, Hypercolumns, fit_probe
    from .segmentation import organ_dice

    data = _openkbp(context, job.weights)
    protocol = context.protocol
    hypercolumns = Hypercolumns(_frozen_encoder(job, context), protocol.probe.voxels_per_case)
    runs = [
        (count, seed, training_cases(data.train, count, seed))
        for count in protocol.label_counts
        for seed in protocol.seeds
    ]
    probes = [fit_probe(hypercolumns, cases, protocol.probe, seed) for _, seed, cases in runs]
    dice: dict[int, list[np.ndarray]] = {index: [] for index in range(len(runs))}
    for start in range(0, len(data.test), BATCH):
        group = data.test[start : start + BATCH]
        labels = data.test_labels[start : start + BATCH]
        for case, label, features in zip(group, labels, hypercolumns.features(group), strict=True):
            for index, probe in enumerate(probes):
                prediction = paste(probe.predict(features, hypercolumns.strides), case)
                dice[index].append(organ_dice(prediction, label, case.labelled))
    return [
        _dice_record(count, seed, cases, np.stack(dice[index]))
        for index, (count, seed, cases) in enumerate(runs)
    ]


def _frozen_encoder(job: Job, context: Context, **kwargs: Any) -> torch.nn.Module:
    """The encoder a probe reads features from (a scratch one: one seeded random draw,
    whatever the order the jobs run in)."""
    from .. import load_encoder
    from ..finetune.networks import weights_option

    torch.manual_seed(0)
    source = weights_option(context.sources[job.weights], "unet3d_luna")
    return load_encoder(**source, **kwargs).eval()


def _dice_record(
    count: int | str, seed: int, cases: list[Case], dice: np.ndarray
) -> dict[str, Any]:
    """Per-organ mean Dice over the test patients that have the organ, and their mean."""
    with np.errstate(invalid="ignore"):
        per_organ = np.nanmean(dice, axis=0)
    return {
        "labels": count,
        "seed": seed,
        "train_cases": [case.name for case in cases],
        "mean_dice": float(np.nanmean(per_organ)),
        "dice_per_organ": dict(zip(ORGANS, map(float, per_organ), strict=True)),
        "test_cases": len(dice),
    }


def _classification(job: Job, context: Context) -> dict[str, Any]:
    from ..finetune import FinetuneConfig, TrainingSettings, finetune

    settings = context.protocol.classification
    epochs = min(settings.max_epochs, math.ceil(settings.epochs_at_full_labels / job.labels))
    config = FinetuneConfig(
        task="classify3d",
        data=str(Path(context.adrenal)),
        weights=context.sources[job.weights],
        label_fraction=job.labels,
        seed=job.seed,
        training=TrainingSettings(
            epochs=epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            patience=settings.patience,
        ),
        device="cpu",
        evaluated=("test",),
    )
    results = finetune(config).results
    test = results["metrics"]["test"]
    return {
        "labels": job.labels,
        "seed": job.seed,
        "auc": test["auc"],
        "accuracy": test["accuracy"],
        "train_samples": results["data"]["samples"]["train"],
        "epochs_run": results["epochs_run"],
    }


def _classification_probe(job: Job, context: Context) -> list[dict[str, Any]]:
    from .classification_probe import probe_classification

    protocol = context.protocol
    return probe_classification(
        _frozen_encoder(job, context, pool="avg"),
        context.adrenal,
        protocol.classification.label_fractions,
        protocol.seeds,
        protocol.classification_probe,
    )
