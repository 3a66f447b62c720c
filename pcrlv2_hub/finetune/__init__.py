"""Transfer learning: fine-tune a PCRLv2 encoder on a labelled task and measure it.

    >>> from pcrlv2_hub.finetune import FinetuneConfig, finetune
    >>> run = finetune(FinetuneConfig(task="classify3d", data="adrenalmnist3d.npz",
    ...                               weights="unet3d_luna", label_fraction=0.1, seed=0))
    >>> run.results["metrics"]["test"]["auc"], run.model  # the network with its best weights

``pcrlv2-hub finetune`` is the same function on the command line. Names are imported on
first use, so the command line's ``--help`` does not pay for importing torch.
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
