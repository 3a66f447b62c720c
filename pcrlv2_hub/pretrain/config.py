"""Everything a pretraining run needs to know, in one dataclass with the paper's defaults.

A run is described by :class:`PretrainConfig`; it can come from a JSON file and every
value can be overridden on the command line (``--lr 0.01``, ``--no-channels-last``,
``--view num_locals=4``). Values left unset follow the paper for the chosen dimension:
3D lr 1e-3, batch 32; 2D lr 1e-2, batch 64; both SGD (momentum 0.9, weight decay 1e-4)
with a cosine learning rate per epoch over 240 epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

if typing.TYPE_CHECKING:
    from .views import ViewConfig2D, ViewConfig3D
    from .volumes import Preprocessing

# This module imports neither torch nor the data readers, so `pcrlv2-hub --help` stays fast.
OBJECTIVES = ("full", "restoration", "comparison")
"""The paper's ablations: all four terms, the two restoration terms, the two comparisons."""
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
PAPER_DEFAULTS: dict[int, dict[str, Any]] = {
    3: {"lr": 1e-3, "batch_size": 32, "items_per_source": 32},
    2: {"lr": 1e-2, "batch_size": 64, "items_per_source": 1},
}
ARCHITECTURE = {3: "pcrlv2_unet3d", 2: "pcrlv2_unet2d"}
DICT_FLAGS = {"views": "--view", "preprocessing": "--preprocess"}

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"
DEMO_SETTINGS: dict[int, dict[str, Any]] = {
    3: {
        "data": str(SAMPLE_DATA / "*_ct.nii.gz"),
        "widths": [16, 32, 64, 128],
        "views": {"global_size": [32, 32, 16], "local_size": [8, 8, 8]},
    },
    2: {
        "data": str(SAMPLE_DATA / "chestxray"),
        "widths": [64, 32, 16, 16, 8],
        "views": {"global_size": 64, "local_size": 32, "cutout_size": 8},
    },
}
"""The demo without ``--data``: the real CT / X-ray samples shipped in the package, a
narrow network, small views and a few steps: about a minute on two CPU cores."""
_DEMO_RUN = {"epochs": 2, "steps_per_epoch": 5, "batch_size": 4, "checkpoint_every": 5}


def demo_settings(dim: int) -> dict[str, Any]:
    """The demo's settings for ``dim``; any flag or configuration file value overrides them."""
    if dim not in DEMO_SETTINGS:
        raise InvalidInputError(f"dim={dim!r}; choose 3 (CT volumes) or 2 (X-rays).")
    return {"dim": dim, **_DEMO_RUN, **DEMO_SETTINGS[dim]}


HELP = {
    "dim": "3 for CT volumes, 2 for chest X-rays",
    "data": "a folder (searched recursively), a glob, or a text file listing one path per "
    "line; none: a short demo on the CT/X-ray samples shipped with the package",
    "output": "the run's folder: checkpoints, metrics, reports, export",
    "objective": f"PCRLv2 or an ablation: {', '.join(OBJECTIVES)}",
    "epochs": "epochs; the learning rate follows a cosine per epoch",
    "steps_per_epoch": "optimiser steps per epoch; none: items_per_source per volume/image",
    "items_per_source": "training items cut from each volume (3D: 32, as the authors) or "
    "image (2D: 1) per epoch",
    "batch_size": "the global batch, split over processes and accumulation micro-batches; "
    "the paper: 32 (3D), 64 (2D)",
    "accumulation": "micro-batches per optimiser step: the same batch with less memory",
    "lr": "peak learning rate; the paper: 1e-3 (3D), 1e-2 (2D)",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "widths": "3D: the four encoder widths (paper 64,128,256,512); 2D: the five decoder "
    "widths (paper 256,128,64,32,16)",
    "imagenet_init": "2D only: start the ResNet-18 encoder from timm's ImageNet weights; "
    "needs network access to the Hugging Face Hub (or its weights already in the cache)",
    "views": "override the view recipe (ViewConfig3D / ViewConfig2D), e.g. num_locals=4 or "
    "global_size=[32,32,16]",
    "preprocessing": "3D only: override volume preprocessing, e.g. modality=mri",
    "checkpoint_every": "optimiser steps between checkpoints (and report PNGs)",
    "precision": f"{', '.join(PRECISIONS)}; fp16 needs CUDA",
    "channels_last": "channels-last memory format",
    "recompute_activations": "keep normalised/ReLU and upsampled activations (2D: the "
    "decoder's) for backward as recipes, rebuilt when needed: the same gradients with "
    "less memory (3D, CPU, batch 2: -0.6 GB) for 5-12 %% more time (not with --compile, "
    "which plans its own)",
    "compile": "torch.compile the network",
    "device": f"{', '.join(DEVICES)} (auto: CUDA when available)",
    "seed": "seed of every random draw: a run replays exactly",
    "workers": "data-loading worker processes per training process",
    "progress": "show a progress bar",
    "export": "export safetensors + model card when the run ends",
    "cache_dir": "where decoded volumes are cached (default $PCRLV2_HUB_CACHE or ~/.cache)",
    "prepare_workers": "processes decoding volumes into the cache per training process "
    "(default: its cores divided by the processes on its node)",
    "shared_cache": "the cache folder is one file system that all nodes see: split the "
    "decoding over all ranks (default: each node decodes into its own cache, split over "
    "its ranks)",
    "prepare_timeout": "seconds a rank waits for the volumes other ranks decode before it "
    "gives up naming them",
    "dist_timeout": "seconds before a collective operation of the process group times out "
    "(PyTorch's default: 600 on NCCL); decoding is not one, so it may take longer",
}


@dataclass
class PretrainConfig:
    """One pretraining run; ``HELP`` explains every field. ``None``: the paper's value."""

    dim: int = 3
    data: str | None = None
    output: str = "pcrlv2_pretrain"
    objective: str = "full"
    epochs: int = 240
    steps_per_epoch: int | None = None
    items_per_source: int | None = None
    batch_size: int | None = None
    accumulation: int = 1
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    widths: list[int] | None = None
    imagenet_init: bool = False
    views: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 500
    precision: str = "fp32"
    channels_last: bool = True
    recompute_activations: bool = False
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    progress: bool = True
    export: bool = True
    cache_dir: str | None = None
    prepare_workers: int | None = None
    shared_cache: bool = False
    prepare_timeout: float = 86400.0
    dist_timeout: float = 1800.0

    def __post_init__(self) -> None:
        if self.dim not in PAPER_DEFAULTS:
            raise InvalidInputError(f"dim={self.dim!r}; choose 3 (CT volumes) or 2 (X-rays).")
        for name, value in PAPER_DEFAULTS[self.dim].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Raise InvalidInputError naming the first value that cannot work, and the fix."""
        _choose("objective", self.objective, OBJECTIVES)
        _choose("precision", self.precision, PRECISIONS)
        _choose("device", self.device, DEVICES)
        for name in ("epochs", "batch_size", "accumulation", "checkpoint_every",
                     "items_per_source"):  # fmt: skip
            _positive(name, getattr(self, name))
        if self.steps_per_epoch is not None:
            _positive("steps_per_epoch", self.steps_per_epoch)
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.workers < 0:
            raise InvalidInputError("lr must be > 0; momentum, weight_decay, workers >= 0.")
        if self.prepare_workers is not None:
            _positive("prepare_workers", self.prepare_workers)
        if not (self.prepare_timeout > 0 and self.dist_timeout > 0):
            raise InvalidInputError("prepare_timeout and dist_timeout are seconds > 0.")
        if self.batch_size % self.accumulation:
            raise InvalidInputError(
                f"batch_size={self.batch_size} is not divisible by accumulation="
                f"{self.accumulation}; pick a batch that splits into equal micro-batches."
            )
        if self.imagenet_init and self.dim != 2:
            raise InvalidInputError("imagenet_init applies to the 2D ResNet-18 only (--dim 2).")
        if self.preprocessing and self.dim != 3:
            raise InvalidInputError("preprocessing overrides apply to 3D volumes only.")
        self.view_config()
        self.volume_preprocessing()

    def view_config(self) -> ViewConfig3D | ViewConfig2D:
        """The view recipe of this dimension with the ``views`` overrides applied."""
        from .views import ViewConfig2D, ViewConfig3D

        recipe = ViewConfig3D() if self.dim == 3 else ViewConfig2D()
        return _override(recipe, self.views, "views")

    def volume_preprocessing(self) -> Preprocessing:
        from .volumes import Preprocessing

        return _override(Preprocessing(), self.preprocessing, "preprocessing")

    @property
    def architecture(self) -> str:
        return ARCHITECTURE[self.dim]

    def model_arguments(self) -> dict[str, Any]:
        """All constructor arguments of the network, stored with the exported weights."""
        if self.dim == 3:
            from ..models.unet3d import DEFAULT_WIDTHS_3D

            widths = self.widths or DEFAULT_WIDTHS_3D
            return {"in_channels": 1, "out_channels": 1, "widths": list(widths), "norm": "bn"}
        from ..models.unet2d import DEFAULT_DECODER_WIDTHS_2D

        widths = self.widths or DEFAULT_DECODER_WIDTHS_2D
        return {"in_channels": 3, "out_channels": 3, "decoder_widths": list(widths)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "the configuration") -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(
                f"{where} has unknown settings {unknown}; known settings: {sorted(known)}."
            )
        try:
            return cls(**values)
        except TypeError as error:
            raise InvalidInputError(f"{where}: {error}.") from error

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PretrainConfig:
        """Read a JSON configuration file (keys are the field names)."""
        return cls.from_dict(read_config_file(path), where=str(path))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidInputError(f"cannot read the configuration file {path}: {error}.") from error
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path} is not valid JSON: {error}.") from error
    if not isinstance(values, dict):
        raise InvalidInputError(f"{path} must hold a JSON object of settings.")
    return values


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per field; each overrides the configuration file and the defaults."""
    hints = typing.get_type_hints(PretrainConfig)
    for spec in fields(PretrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        kind = hints[spec.name]
        help_text = HELP[spec.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)  # fmt: skip
        elif _base(kind) is dict:
            parser.add_argument(
                DICT_FLAGS[spec.name], dest=spec.name, action="append",
                type=parse_assignment, default=None, metavar="NAME=JSON",
                help=help_text + " (repeatable)",
            )  # fmt: skip
        elif _base(kind) is list:
            parser.add_argument(flag, type=_int_list, default=None, metavar="N,N,...",
                                help=help_text)  # fmt: skip
        else:
            parser.add_argument(flag, type=_base(kind), default=None, help=help_text)


def config_from_arguments(
    args: argparse.Namespace, base: dict[str, Any] | None = None
) -> PretrainConfig:
    """``base`` values, then the ``--config`` file, then the flags given on the command line."""
    values = dict(base or {})
    if getattr(args, "config", None):
        values.update(read_config_file(args.config))
    for spec in fields(PretrainConfig):
        given = getattr(args, spec.name, None)
        if given is None:
            continue
        if isinstance(given, list) and given and isinstance(given[0], tuple):
            values[spec.name] = {**values.get(spec.name, {}), **dict(given)}
        else:
            values[spec.name] = given
    return PretrainConfig.from_dict(values, where="the command line and configuration")


def _override(recipe: Any, overrides: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(recipe)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInputError(
            f"{where} has unknown settings {unknown} for {type(recipe).__name__}; "
            f"known: {sorted(known)}."
        )
    converted = {k: _tuples(v) for k, v in overrides.items()}
    try:
        return replace(recipe, **converted)
    except TypeError as error:
        raise InvalidInputError(f"{where}: {error}.") from error


def _tuples(value: Any) -> Any:
    """JSON has lists where the recipes have tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _choose(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInputError(f"{name}={value!r}; choose one of {choices}.")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, not {value!r}.")


def _base(kind: Any) -> Any:
    """``int | None`` -> int, ``list[int] | None`` -> list, ``dict[str, Any]`` -> dict."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (list, dict):
        return typing.get_origin(kind)
    if args:
        return _base(args[0])
    return kind


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, not {text!r}"
        ) from None


def parse_assignment(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value  # a bare word such as modality=mri
