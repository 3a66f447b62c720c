"""A release folder: the weights, their model card and their manifest entry, written together.

Both ``pcrlv2-hub convert`` (official checkpoints) and ``pcrlv2-hub export`` (our own
pretraining runs) end here, so every published file has the same card, the same
manifest snippet and a golden output recorded from the very tensors that were written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import golden
from .atomic import write_text_atomic
from .errors import WeightsFormatError
from .loading import build_loaded
from .manifest import validate_entry
from .models.registry import build_model
from .weights_file import read_metadata, save_weights, sha256_file

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
SNIPPET_NAME = "manifest_entry.json"

PAPER = {
    "title": "A Unified Visual Information Preservation Framework for Self-supervised "
    "Pre-training in Medical Image Analysis",
    "authors": "Hong-Yu Zhou, Chixiang Lu, Chaoqi Chen, Sibei Yang, Yizhou Yu",
    "venue": "IEEE Transactions on Pattern Analysis and Machine Intelligence (TPAMI), 2023",
    "arxiv": "2301.00772",
    "code": "https://github.com/RL4M/PCRLv2",
}

CITATION = """@article{zhou2023pcrlv2,
  title   = {A Unified Visual Information Preservation Framework for Self-supervised
             Pre-training in Medical Image Analysis},
  author  = {Zhou, Hong-Yu and Lu, Chixiang and Chen, Chaoqi and Yang, Sibei and Yu, Yizhou},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year    = {2023},
  doi     = {10.1109/TPAMI.2023.3234002}
}"""

INPUT_SPECS: dict[int, dict[str, Any]] = {
    3: {
        "modality": "CT",
        "axes": "(batch, channel, D, H, W)",
        "channels": 1,
        "intensity_units": "HU",
        "intensity_window": [-1000, 1000],
        "normalisation": "resample to 1 mm, clip to the window, scale linearly to [0, 1]",
        "spacing_mm": [1.0, 1.0, 1.0],
        "patch_size": [64, 64, 32],
        "divisible_by": 8,
    },
    2: {
        "modality": "chest X-ray",
        "axes": "(batch, channel, H, W)",
        "channels": 3,
        "intensity_units": "8-bit grey levels, repeated to 3 channels",
        "intensity_window": [0, 255],
        "normalisation": "scale to [0, 1], then ImageNet mean/std per channel",
        "spacing_mm": None,
        "patch_size": [224, 224],
        "divisible_by": 32,
    },
}


@dataclass(frozen=True)
class Release:
    """The three files of a release and the checksum users will verify."""

    weights_path: Path
    card_path: Path
    snippet_path: Path
    sha256: str
    size_bytes: int


def write_release(
    out_dir: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    architecture: str,
    arguments: dict[str, Any],
    provenance: dict[str, Any],
    *,
    name: str,
    card_sections: dict[str, str] | None = None,
    input_spec: dict[str, Any] | None = None,
) -> Release:
    """Write ``model.safetensors``, ``README.md`` and ``manifest_entry.json`` to ``out_dir``.

    ``card_sections`` (title -> Markdown) replace or extend the card's default sections;
    ``provenance`` may carry ``pretraining_data`` and ``recipe``, copied to the manifest;
    ``input_spec`` overrides values of the dimension's default input description (what a
    run with other preprocessing or view sizes was trained on).
    """
    out_dir = Path(out_dir)
    weights_path = save_weights(
        out_dir / WEIGHTS_NAME, state_dict, architecture, arguments, provenance
    )
    sha256, size = sha256_file(weights_path), weights_path.stat().st_size
    dimension, in_channels = stem_of(state_dict)
    network = build_loaded(partial(build_model, architecture, **arguments), state_dict)
    entry = {
        "name": name,
        "aliases": [],
        "status": "unpublished",
        "note": "Upload model.safetensors to a Hugging Face Hub repo, then fill in "
        "weights.repo_id and weights.revision (the commit hash) and set status to published.",
        "dimension": dimension,
        "architecture": architecture,
        "arguments": arguments,
        "component": "encoder" if architecture.endswith("_encoder") else "full",
        "input": {**INPUT_SPECS[dimension], **(input_spec or {}), "channels": in_channels},
        "weights": {
            "repo_id": None,
            "filename": WEIGHTS_NAME,
            "revision": None,
            "mirrors": [],
            "sha256": sha256,
            "size": size,
            "tensor_digest": read_metadata(weights_path).tensor_digest,
        },
        "license": "MIT",
        "pretraining_data": provenance.get("pretraining_data", "not recorded"),
        "recipe": provenance.get("recipe", "not recorded"),
        "paper": PAPER,
        "provenance": provenance,
        "golden": golden.record(network, dimension, in_channels),
    }
    validate_entry(entry)
    snippet_path = write_text_atomic(out_dir / SNIPPET_NAME, json.dumps(entry, indent=2) + "\n")
    card_path = write_text_atomic(out_dir / CARD_NAME, model_card(entry, card_sections or {}))
    return Release(weights_path, card_path, snippet_path, sha256, size)


def stem_of(state_dict: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(spatial dimension, input channels), read off the first convolution kernel."""
    for tensor in state_dict.values():
        if tensor.dim() >= 4:
            return tensor.dim() - 2, int(tensor.shape[1])
    raise WeightsFormatError("the state dict holds no convolution kernel: not a PCRLv2 network.")


def model_card(entry: dict[str, Any], extra_sections: dict[str, str]) -> str:
    """A Hugging Face model card: YAML front matter, then the sections users look for."""
    name, spec = entry["name"], entry["input"]
    tags = ["medical-imaging", "self-supervised-learning", "pcrlv2", f"{entry['dimension']}d"]
    sections = {
        "Description": (
            f"PCRLv2 weights `{name}`: architecture `{entry['architecture']}` "
            f"({entry['component']} network) with arguments "
            f"`{json.dumps(entry['arguments'], sort_keys=True)}`, self-supervised with "
            "PCRLv2 (pixel restoration, multi-scale comparison and sub-crops on a U-Net "
            "without skip connections)."
        ),
        "Intended use": (
            "A starting point for transfer learning on "
            f"{spec['modality']} ({entry['dimension']}D): classification from the pooled "
            "encoder, segmentation with the encoder inside a U-Net with skip connections. "
            "Not a diagnostic device; it has never been evaluated for clinical use."
        ),
        "Training data": _plain(entry["pretraining_data"]),
        "Recipe": _plain(entry["recipe"]),
        "Input": "\n".join(f"- {key}: {value}" for key, value in spec.items()),
        "How to load": (
            "```python\nimport pcrlv2_hub\n\n"
            f'model = pcrlv2_hub.load(weights="{WEIGHTS_NAME}")  # or load("{name}")\n'
            f'encoder = pcrlv2_hub.load_encoder(weights="{WEIGHTS_NAME}")\n```\n\n'
            f"sha256 `{entry['weights']['sha256']}`, {entry['weights']['size']} bytes. "
            "`pcrlv2-hub verify FILE` checks the checksum, a strict load and the golden output."
        ),
        "Provenance": "```json\n" + json.dumps(entry["provenance"], indent=2) + "\n```",
        "Citation": f"```bibtex\n{CITATION}\n```",
        **extra_sections,
    }
    front = (
        f"---\nlicense: {entry['license'].lower()}\nlibrary_name: pcrlv2_hub\ntags:\n"
        + "".join(f"- {tag}\n" for tag in tags)
        + "---\n"
    )
    body = "".join(f"\n## {title}\n\n{text.strip()}\n" for title, text in sections.items())
    return f"{front}\n# {name}\n{body}"


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else "```json\n" + json.dumps(value, indent=2) + "\n```"
