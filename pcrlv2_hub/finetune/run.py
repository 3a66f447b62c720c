"""One fine-tuning run from a config: data, label subset, network, training, metrics, JSON.

``finetune(config)`` is what ``pcrlv2-hub finetune`` calls, and what a transfer experiment
loops over (weights x label fractions x seeds): each call returns the fine-tuned network and
the results dictionary it writes, so tables are a few lines of aggregation.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..errors import DataError, InvalidInputError
from ..models.encoders import stem_convolution
from .datasets import Dataset, Split, load_dataset
from .luna16 import Luna16Settings
from .networks import PadToStride, build_network, describe_weights
from .sampling import stratified_subset
from .settings import TrainingSettings
from .tasks import TASKS, Task
from .training import evaluate, train

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines a run; stored in its results so the run can be repeated."""

    task: str
    data: str
    weights: str = "scratch"
    label_fraction: float = 1.0
    seed: int = 0
    in_channels: int | None = None
    """Adapt the encoder's first convolution to this many input channels (default: keep)."""
    training: TrainingSettings = field(default_factory=TrainingSettings)
    device: str | None = None
    """``cuda`` when available, else ``cpu``, unless given."""
    evaluated: tuple[str, ...] = ("train", "val", "test")
    """The splits whose final metrics are measured (a benchmark needs only ``test``)."""
    spacing: tuple[float, float, float] | None = None
    """CSV tables of volumes: resample each to this spacing (mm) first."""
    volume_size: tuple[int, int, int] | None = None
    """CSV tables of volumes: then centre-crop or pad each to this size."""
    protocol: str | None = None
    """``luna16``: ``data`` is a LUNA16 folder, read as nodule-candidate crops (classify3d)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InvalidInputError(f"unknown task {self.task!r}; choose one of {sorted(TASKS)}.")
        if not self.evaluated or not set(self.evaluated) <= {"train", "val", "test"}:
            raise InvalidInputError(
                f"evaluated={self.evaluated!r}; name some of the splits train, val, test."
            )
        if self.protocol not in (None, "luna16"):
            raise InvalidInputError(
                f"unknown protocol {self.protocol!r} for finetune: luna16 (nodule crops); "
                "brats2018 and lits2017 are segmentation protocols of `finetune-volumes`."
            )
        if self.protocol == "luna16" and self.task != "classify3d":
            raise InvalidInputError(
                "the luna16 protocol classifies nodule crops: --task classify3d."
            )


@dataclass
class FinetuneRun:
    """A finished run: the network with its best weights (eval mode) and the results."""

    model: PadToStride
    results: dict[str, Any]


def finetune(config: FinetuneConfig, output: str | Path | None = None) -> FinetuneRun:
    """Run ``config``; its results are also written to ``output/results.json`` if given."""
    task = TASKS[config.task]
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = load_dataset(
        config.data,
        task.spatial_dims,
        task.segmentation,
        spacing=config.spacing,
        volume_size=config.volume_size,
        luna16=Luna16Settings(spacing=config.spacing) if config.protocol == "luna16" else None,
    )
    splits = _prepared_splits(dataset, task, config.label_fraction, config.seed)
    model = build_network(
        task, config.weights, dataset.num_classes, config.in_channels, config.seed
    )
    _check_channels(model, int(splits["train"].images.shape[1]), dataset.source)
    log = train(
        model.to(device),
        splits["train"],
        splits["val"],
        task,
        dataset.num_classes,
        config.training,
        seed=config.seed,
        device=device,
    )
    metrics = {}
    for name, split in splits.items():
        if name not in config.evaluated:
            continue
        loss, outputs = evaluate(model, split, task, config.training.batch_size, device)
        metrics[name] = {"loss": loss, **task.metrics(outputs, split.targets, dataset.num_classes)}
    results = {
        "config": asdict(config),
        "data": _describe(dataset, splits, task),
        "weights": describe_weights(config.weights, task),
        "network_stride": model.stride,
        "transfer_report": str(getattr(model.network, "transfer_report", "")) or None,
        "metrics": metrics,
        "best_epoch": log.best_epoch,
        "epochs_run": len(log.history),
        "train_seconds": log.train_seconds,
        "history": log.history,
        "environment": {
            "torch": torch.__version__,
            "device": str(device),
            "machine": platform.machine(),
        },
    }
    results = json_safe(results)
    if output is not None:
        write_text_atomic(Path(output) / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return FinetuneRun(model.eval(), results)


def _prepared_splits(
    dataset: Dataset, task: Task, label_fraction: float, seed: int
) -> dict[str, Split]:
    """The splits as the network takes them, the training split cut to ``label_fraction``."""
    splits = dict(dataset.splits)
    strata = np.zeros(len(splits["train"])) if task.segmentation else splits["train"].targets
    splits["train"] = splits["train"].subset(stratified_subset(strata, label_fraction, seed))
    return {name: Split(task.prepare_images(s.images), s.targets) for name, s in splits.items()}


def _check_channels(model: torch.nn.Module, channels: int, source: str) -> None:
    expected = stem_convolution(model).in_channels
    if channels != expected:
        raise DataError(
            f"{source} has {channels}-channel images but the network takes "
            f"{expected}; pass --in-channels {channels} to adapt its first convolution "
            "(in_channels= in Python)."
        )


def _describe(dataset: Dataset, splits: dict[str, Split], task: Task) -> dict[str, Any]:
    description: dict[str, Any] = {
        "source": dataset.source,
        "num_classes": dataset.num_classes,
        "image_shape": list(splits["train"].images.shape[1:]),
        "samples": {name: len(split) for name, split in splits.items()},
        "train_samples_before_label_fraction": len(dataset.splits["train"]),
    }
    if not task.segmentation:
        description["class_counts"] = {
            name: np.bincount(split.targets, minlength=dataset.num_classes).tolist()
            for name, split in splits.items()
        }
    return description


def json_safe(value: Any) -> Any:
    """NaN and infinities (an undefined metric) become null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
