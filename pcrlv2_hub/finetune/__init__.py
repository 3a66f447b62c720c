"""Transfer learning: fine-tune a PCRLv2 encoder on a labelled task and measure it.

    >>> from pcrlv2_hub.finetune import FinetuneConfig, finetune
    >>> run = finetune(FinetuneConfig(task="classify3d", data="adrenalmnist3d.npz",
    ...                               weights="unet3d_luna", label_fraction=0.1, seed=0))
    >>> run.results["metrics"]["test"]["auc"], run.model  # the network with its best weights

Whole CT/MRI volumes (patches, sliding windows, label maps on the input's grid):

    >>> from pcrlv2_hub.finetune import VolumeRunConfig, finetune_volumes, load_run
    >>> results = finetune_volumes(VolumeRunConfig(data="Task03_Liver"), "runs/liver")
    >>> model, config = load_run("runs/liver")

``pcrlv2-hub finetune``, ``finetune-volumes`` and ``predict`` are the same functions on the
command line. Names are imported on first use, so ``--help`` does not pay for importing
torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "FinetuneConfig": ".run",
    "FinetuneRun": ".run",
    "finetune": ".run",
    "TASKS": ".tasks",
    "TrainingSettings": ".settings",
    "weights_option": ".networks",
    "VolumeRunConfig": ".volume_run",
    "finetune_volumes": ".volume_run",
    "load_run": ".volume_run",
    "PatchSettings": ".patch_training",
    "read_cases": ".cases",
    "predict_folder": ".prediction",
    "PROTOCOLS": ".protocols",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pcrlv2_hub.finetune' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
