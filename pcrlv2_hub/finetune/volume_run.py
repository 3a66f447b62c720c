"""A whole-volume segmentation run: its folder, network, training, test metrics and picture.

The run folder holds everything ``pcrlv2-hub predict`` needs and nothing it must fetch:
``config.json`` (data, preprocessing, patch settings, the network's architecture and
classes), ``model.safetensors`` (the best validated weights, digest-checked on read),
``results.json`` (Dice and HD95 per test case and class, and their summary),
``example.png`` (a test case's slices with label and prediction), and the checkpoints
and patch cache of training.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_text_atomic
from ..errors import InvalidInputError
from ..pretrain.volumes import Preprocessing
from ..weights_file import read_weights, save_weights
from .cases import Case, read_cases, split_cases
from .networks import PadToStride, build_network, describe_weights
from .patch_training import PatchSettings, evaluate_cases, train_on_patches
from .run import json_safe
from .tasks import TASKS

CONFIG_FILE, WEIGHTS_FILE, RESULTS_FILE, EXAMPLE_FILE = (
    "config.json",
    "model.safetensors",
    "results.json",
    "example.png",
)
ARCHITECTURE = "pcrlv2_segmentation"
"""What ``model.safetensors`` records: a skip U-Net around a PCRLv2 encoder."""


@dataclass(frozen=True)
class VolumeRunConfig:
    """Everything that defines a run; stored in its folder so that it can be repeated."""

    data: str
    weights: str = "scratch"
    train_cases: int | None = None
    """Use only this many training cases (chosen by ``seed``); None: all."""
    seed: int = 0
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    patches: PatchSettings = field(default_factory=PatchSettings)
    device: str | None = None
    regions: dict[str, tuple[int, ...]] | None = None
    """Reported regions (label value unions) of a protocol preset, besides each class."""


def finetune_volumes(
    config: VolumeRunConfig, run_dir: str | Path, *, resume: bool = False
) -> dict[str, Any]:
    """Train, keep the best weights, measure the test cases; returns ``results.json``."""
    run_dir = Path(run_dir)
    dataset = read_cases(config.data)
    splits = split_cases(dataset, seed=config.seed)
    train = _subset(splits["train"], config.train_cases, config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    channels = len(train[0].images) if train else len(dataset.channel_names)
    model = build_network(
        TASKS["segment3d"], config.weights, dataset.num_classes, channels, config.seed
    )
    described = {
        "config": json_safe(asdict(config)),
        "classes": list(dataset.class_names),
        "channels": list(dataset.channel_names),
        "network": _network(config.weights, dataset.num_classes, channels),
        "weights": describe_weights(config.weights, TASKS["segment3d"]),
        "splits": {
            name: [c.name for c in cases] for name, cases in {**splits, "train": train}.items()
        },
    }
    _check_run_folder(run_dir, described, resume)
    if not resume:  # cached cases of an earlier, unfinished start may be preprocessed otherwise
        shutil.rmtree(run_dir / "cache", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, json.dumps(described, indent=2) + "\n")
    common = {
        "num_classes": dataset.num_classes,
        "preprocessing": config.preprocessing,
        "settings": config.patches,
        "device": device,
    }
    history = train_on_patches(
        model.to(device),
        train,
        splits["val"],
        run_dir=run_dir,
        seed=config.seed,
        resume=resume,
        **common,
    )
    save_weights(
        run_dir / WEIGHTS_FILE,
        model.state_dict(),
        ARCHITECTURE,
        described["network"],
        {"weights": described["weights"], "data": config.data},
    )
    example = run_dir / EXAMPLE_FILE
    test = evaluate_cases(model, splits["test"], example=example, regions=config.regions, **common)
    results = {**described, "test": test, "history": history}
    write_text_atomic(run_dir / RESULTS_FILE, json.dumps(json_safe(results), indent=2) + "\n")
    return results


def load_run(run_dir: str | Path) -> tuple[PadToStride, dict[str, Any]]:
    """The trained network of a run folder (eval mode, verified weights) and its config."""
    from ..models.encoders import adapt_in_channels
    from ..models.segmentation import build_segmentation

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / WEIGHTS_FILE).is_file():
        raise InvalidInputError(
            f"{run_dir} is not a finished run of `pcrlv2-hub finetune-volumes` (it needs "
            f"{CONFIG_FILE} and {WEIGHTS_FILE})."
        )
    described = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    network = described["network"]
    model, _ = build_segmentation(
        network["encoder"], network["encoder_arguments"], network["num_classes"], None
    )
    if network["in_channels"] != network["encoder_in_channels"]:
        adapt_in_channels(model, network["in_channels"])
    wrapped = PadToStride(model, dense=True)
    state, _ = read_weights(run_dir / WEIGHTS_FILE)
    wrapped.load_state_dict(state)
    return wrapped.eval(), described


def preprocessing_of(described: dict[str, Any]) -> Preprocessing:
    """The run's preprocessing, as stored in its config."""
    stored = dict(described["config"]["preprocessing"])
    for key in ("spacing", "window", "percentiles", "array_spacing"):
        if stored.get(key) is not None:
            stored[key] = tuple(stored[key])
    return Preprocessing(**stored)


def _check_run_folder(run_dir: Path, described: dict[str, Any], resume: bool) -> None:
    """Never train over another run's checkpoints, nor resume with other settings (more
    steps excepted: extending a run is what resuming is for)."""
    stored = run_dir / CONFIG_FILE
    if not resume:
        if (run_dir / "last.pt").exists():
            raise InvalidInputError(
                f"{run_dir} holds a run already; pass --resume to continue it, or another --output."
            )
        return
    if not stored.is_file():
        raise InvalidInputError(f"{run_dir} holds no run to resume; start it without --resume.")

    def settings(config: dict[str, Any]) -> dict[str, Any]:
        return {**config, "patches": {**config["patches"], "steps": None}}

    before = json.loads(stored.read_text(encoding="utf-8"))
    if settings(before["config"]) != settings(described["config"]):
        raise InvalidInputError(
            f"{run_dir} was started with other settings than these (only --steps may change "
            "on --resume); resume it with its own, or pass another --output."
        )


def _network(weights: str, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The architecture of ``weights`` (no tensors read), to rebuild the network later."""
    from ..api import _resolve
    from .networks import weights_option

    option = weights_option(weights, TASKS["segment3d"].default_model)
    resolved = _resolve(option["name"], False, option["weights"], None, None, None, {})
    return {
        "encoder": resolved.architecture,
        "encoder_arguments": resolved.arguments,
        "encoder_in_channels": int(resolved.arguments.get("in_channels", 1)),
        "in_channels": in_channels,
        "num_classes": num_classes,
    }


def _subset(cases: list[Case], count: int | None, seed: int) -> list[Case]:
    if count is None:
        return cases
    if not 1 <= count <= len(cases):
        raise InvalidInputError(
            f"--train-cases {count}: the training split has {len(cases)} cases."
        )
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed)).tolist()
    return [cases[i] for i in sorted(order[:count])]
