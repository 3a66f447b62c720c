"""Data path of 3D pretraining: sub-crops + corruptions of one training item, on one CPU core.

One item = two global views (64x64x32) and six local views (16^3) cut from the real chest
CT sample (decoded once into a memory-mapped cache), then flipped, affinely transformed,
blurred, noised, gamma-corrected, patch-swapped and z-normalised. Measured two ways:
one item at a time (batch 1) and per item within a batch of 32, both with
``torch.set_num_threads(1)``. The authors' pipeline on the project's 2-core machine took
0.254 s to cut one crop pair with its locals and 63.5 ms to augment it (issue #3).

    python benchmarks/bench_data.py            # writes benchmarks/results/data_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from pcrlv2_hub.pretrain.crops import SubCropSampler
from pcrlv2_hub.pretrain.dataset import SubCropDataset, corrupt_batch
from pcrlv2_hub.pretrain.preparation import prepare_volumes
from pcrlv2_hub.pretrain.views import ViewConfig3D

SAMPLE = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data" / "chest_ct.nii.gz"
AUTHORS_CROP_S, AUTHORS_AUGMENT_S = 0.254, 0.0635
GOAL_MS = 16.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300, help="items timed one at a time")
    parser.add_argument("--batches", type=int, default=10, help="batches timed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/data_pipeline.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ViewConfig3D()
    with tempfile.TemporaryDirectory() as cache:
        volumes = prepare_volumes(SAMPLE, cache_dir=cache).volumes
        total_items = args.items + args.batches * args.batch_size
        dataset = SubCropDataset(volumes, SubCropSampler(config), total_items, seed=0)
        generator = torch.Generator().manual_seed(0)
        load_before = os.getloadavg()
        single = _time_single(dataset, generator, config, args.items)
        batched = _time_batched(dataset, generator, config, args)
        load_after = os.getloadavg()
    authors_ms = (AUTHORS_CROP_S + AUTHORS_AUGMENT_S) * 1000
    results = {
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "machine": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "volume": f"{SAMPLE.name} at 1 mm, shape {tuple(volumes[0].shape)}",
        "batch_1_ms_per_item": single,
        f"batch_{args.batch_size}_ms_per_item": batched,
        "authors_ms_per_item": authors_ms,
        "speedup_vs_authors_batch_1": _speedups(authors_ms, single),
        "speedup_vs_authors_batched": _speedups(authors_ms, batched),
        "goal_ms_per_item": GOAL_MS,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _time_single(dataset, generator, config, items: int) -> dict[str, dict[str, float]]:
    crop, corrupt = [], []
    for index in range(items):
        start = _clocks()
        item = dataset[index]
        middle = _clocks()
        corrupt_batch({k: v[None] for k, v in item.items()}, generator, config)
        end = _clocks()
        crop.append(middle - start)
        corrupt.append(end - middle)
    return _medians(crop, corrupt, per=1)


def _time_batched(dataset, generator, config, args) -> dict[str, dict[str, float]]:
    crop, corrupt = [], []
    first = args.items
    for b in range(args.batches):
        indices = range(first + b * args.batch_size, first + (b + 1) * args.batch_size)
        start = _clocks()
        batch = default_collate([dataset[i] for i in indices])
        middle = _clocks()
        corrupt_batch(batch, generator, config)
        end = _clocks()
        crop.append(middle - start)
        corrupt.append(end - middle)
    return _medians(crop, corrupt, per=args.batch_size)


def _clocks() -> np.ndarray:
    """Wall time, and this process's CPU time (what one core spends, even on a busy machine)."""
    return np.array([time.perf_counter(), time.process_time()])


def _medians(crop: list, corrupt: list, per: int) -> dict[str, dict[str, float]]:
    result = {}
    for k, clock in enumerate(("wall", "cpu")):
        parts = {"crops": [c[k] for c in crop], "corruptions": [c[k] for c in corrupt]}
        parts["total"] = [a + b for a, b in zip(parts["crops"], parts["corruptions"], strict=True)]
        result[f"{clock}_ms"] = {
            name: round(statistics.median(values) * 1000 / per, 2) for name, values in parts.items()
        }
    result["samples"] = len(crop)
    return result


def _speedups(authors_ms: float, timing: dict) -> dict[str, float]:
    return {
        clock: round(authors_ms / timing[f"{clock}_ms"]["total"], 1) for clock in ("wall", "cpu")
    }


def _cpu_model() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    return names[0] if names else platform.processor()


if __name__ == "__main__":
    main()
