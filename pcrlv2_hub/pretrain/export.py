"""From a training checkpoint to a release users can load, and from a release to the Hub.

``export_checkpoint`` keeps only the network's weights and writes them through
:func:`pcrlv2_hub.publish.write_release` (safetensors whose metadata rebuilds the network,
a model card, the manifest entry), with the run's provenance: data files and their
checksums, the recipe, the steps, the final losses, the versions and the command.
``push_release`` uploads such a folder with huggingface_hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, UploadError
from ..publish import CARD_NAME, SNIPPET_NAME, WEIGHTS_NAME, Release, write_release
from .checkpoint import load_checkpoint
from .config import PretrainConfig

RECIPE_FIELDS = (
    "objective",
    "epochs",
    "batch_size",
    "accumulation",
    "lr",
    "momentum",
    "weight_decay",
    "items_per_source",
    "steps_per_epoch",
    "imagenet_init",
    "views",
    "preprocessing",
    "precision",
    "seed",
)


def export_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, name: str | None = None
) -> Release:
    """Write ``model.safetensors``, ``README.md`` and ``manifest_entry.json`` to ``out_dir``.

    ``checkpoint`` is a ``last.pt``/``previous.pt`` file or a run's output folder.
    """
    state = load_checkpoint(checkpoint)
    config = PretrainConfig.from_dict(state["config"], where=f"the checkpoint {checkpoint}")
    provenance = {
        "pretraining_data": state["data"],
        "recipe": {
            "method": "PCRLv2 (Zhou et al., TPAMI 2023)",
            "optimizer": "SGD, cosine learning rate per epoch",
            **{key: state["config"][key] for key in RECIPE_FIELDS},
            "processes": state["world_size"],
        },
        "steps": state["step"],
        "total_steps": state["total_steps"],
        "epoch": state["epoch"],
        "final_losses": state["losses"],
        "versions": state["versions"],
        "command": state["command"],
    }
    name = name or f"pcrlv2_{config.dim}d_{config.objective}"
    sections = {"Training run": _training_run(state)}
    return write_release(
        out_dir,
        state["model"],
        config.architecture,
        config.model_arguments(),
        provenance,
        name=name,
        card_sections=sections,
        input_spec=input_spec(config),
    )


def input_spec(config: PretrainConfig) -> dict[str, Any]:
    """What the run's network saw: its preprocessing and the size of its global views."""
    if config.dim != 3:
        return {"patch_size": [config.view_config().global_size] * 2}
    preprocessing = config.volume_preprocessing()
    spacing = list(preprocessing.spacing) if preprocessing.spacing else None
    resample = f"resample to {spacing} mm" if spacing else "keep the original voxel grid"
    if preprocessing.modality == "ct":
        window = "clip to the window, scale linearly to [0, 1]"
        units, limits = "HU", list(preprocessing.window)
    else:
        window = f"scale the {list(preprocessing.percentiles)} percentiles to [0, 1]"
        units, limits = "MRI grey levels, per volume", [0, 1]
    views = config.view_config()
    seen = None
    if spacing:  # global crops are resized to the patch: the voxel size the network saw
        ratios = np.mean([np.divide(s, views.global_size) for s in views.global_scales], axis=0)
        seen = [round(float(v), 2) for v in np.multiply(spacing, ratios)]
    return {
        "modality": preprocessing.modality.upper(),
        "intensity_units": units,
        "intensity_window": limits,
        "normalisation": f"{resample}, {window}; random crops resized to the patch size "
        f"(on average {seen} mm voxels) and z-normalised (zero mean, unit variance)",
        "spacing_mm": spacing,
        "view_spacing_mm": seen,
        "patch_size": list(views.global_size),
    }


def push_release(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
) -> Any:
    """Upload a release folder to the Hugging Face Hub repo ``repo_id`` (created if needed).

    The token comes from ``token``, ``HF_TOKEN`` or the ``hf auth login`` cache; without one
    nothing is sent. Returns huggingface_hub's CommitInfo (its ``oid`` is the revision to
    pin in the manifest).
    """
    import huggingface_hub

    folder = Path(folder)
    missing = [f for f in (WEIGHTS_NAME, CARD_NAME, SNIPPET_NAME) if not (folder / f).is_file()]
    if missing:
        raise InvalidInputError(
            f"{folder} is not a release folder (missing {', '.join(missing)}); create one with "
            f"`pcrlv2-hub export CHECKPOINT -o {folder}`."
        )
    token = token or huggingface_hub.get_token()
    if not token:
        raise UploadError(
            "no Hugging Face token: log in with `hf auth login` (or set the HF_TOKEN "
            "environment variable to a token with write access), then push again. Nothing "
            "was uploaded."
        )
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=f"Upload PCRLv2 weights {_release_name(folder)}",
        )
    except Exception as error:  # Hub HTTP errors or the HTTP client's (its name varies by version)
        raise UploadError(
            f"uploading {folder} to {repo_id} failed ({type(error).__name__}: {error}). Check "
            f"the repo id, that the token may write to it, and the network."
        ) from error


def _release_name(folder: Path) -> str:
    return json.loads((folder / SNIPPET_NAME).read_text(encoding="utf-8"))["name"]


def _training_run(state: dict[str, Any]) -> str:
    losses = ", ".join(f"{k} {v:.4f}" for k, v in state["losses"].items())
    data = state["data"]
    return (
        f"Pretrained with `pcrlv2-hub pretrain` for {state['step']} of {state['total_steps']} "
        f"steps on {state['world_size']} process(es), on {data['used']} of {data['found']} "
        f"data files from `{data['source']}` ({len(data['skipped'])} skipped).\n\n"
        f"Final losses: {losses}.\n\nCommand: `{state['command']}`"
    )
