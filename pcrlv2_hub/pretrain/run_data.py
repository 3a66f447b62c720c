"""What a run trains on: its data prepared by every rank at once, and the provenance of it.

Under torchrun no rank waits for another in a collective while volumes are decoded (a
collective times out after ``dist_timeout``; decoding an archive can take longer): each
rank decodes its share and waits on the cache itself, up to ``prepare_timeout``
(``preparation.py``). Only once all are prepared do the ranks talk, to count who decoded
what for the provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import distributed
from .config import PretrainConfig
from .distributed import DistributedContext
from .sources import DataSummary

FILES_HASHED = 64  # provenance lists each data file's sha256 up to this many files


def prepare_run_data(
    config: PretrainConfig, context: DistributedContext
) -> tuple[list[Any], dict[str, Any]]:
    """The usable volumes (decoded into the cache) or images, and their description."""
    progress = context.is_writer and config.progress
    if config.dim == 2:
        from .views2d import prepare_images

        images = prepare_images(config.data)
        return images.paths, describe_data(config.data, images.paths, images.summary)
    from .preparation import prepare_configured_volumes

    prepared = prepare_configured_volumes(config, progress)
    largest = tuple(max(sizes) for sizes in zip(*config.view_config().global_scales, strict=True))
    prepared.note_smaller_than(largest, "the largest global crop")
    decoded = torch.zeros(context.world_size, device=context.device)
    decoded[context.rank] = prepared.decoded
    description = describe_data(config.data, prepared.paths, prepared.summary)
    description["decoded_per_rank"] = distributed.sum_over_ranks(decoded, context).int().tolist()
    description["cache_bytes"] = prepared.cache_bytes
    description["prepare_seconds"] = round(prepared.seconds, 3)
    return prepared.volumes, description


def describe_data(source: str | None, paths: list[Path], summary: DataSummary) -> dict[str, Any]:
    """What the run trained on, for the provenance: files and checksums, or their count."""
    from ..weights_file import sha256_file

    description: dict[str, Any] = {
        "source": source,
        "found": summary.found,
        "used": summary.used,
        "skipped": [{"path": p, "reason": r} for p, r in summary.skipped],
        "notes": [{"path": p, "note": n} for p, n in summary.notes],
    }
    if len(paths) <= FILES_HASHED and all(p.is_file() for p in paths):
        description["files"] = [{"name": p.name, "sha256": sha256_file(p)} for p in paths]
    return description
