"""Choose the benchmark's segmentation fine-tuning settings on the *validation* patients.

    python benchmarks/openct/choose_segmentation_settings.py --openkbp ../shared/data/openkbp_oars \
        --weights scratch:unet3d_openct_small --set lr=0.01 \
        --set lr=0.003,patch_size=32,batch_size=6 \
        --out benchmarks/openct/results/segmentation_settings.json

Fine-tunes from each ``--weights`` with the cpu protocol's settings changed by each ``--set``
(``--patients`` labelled patients, 5 unless told; ``--seed``, 0 unless told, draws the
patients and seeds the run), and reports the mean Dice on the split's 6 validation
patients; the test patients are never read. Two runs at a time, one thread each.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from pcrlv2_hub.benchmark.jobs import training_cases
from pcrlv2_hub.benchmark.openkbp import load_cases, read_full_label, read_split
from pcrlv2_hub.benchmark.protocol import PROTOCOLS
from pcrlv2_hub.benchmark.segmentation import evaluate, finetune_segmentation


def parse_changes(text: str) -> dict:
    changes: dict = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name == "patch_size":
            changes[name] = (int(value),) * 3
        else:
            changes[name] = int(value) if name in ("steps", "batch_size") else float(value)
    return changes


def run(openkbp: str, weights: str, changes: dict, patients: int, seed: int) -> dict:
    torch.set_num_threads(1)
    protocol = PROTOCOLS["cpu"]
    split = read_split()
    train = load_cases(openkbp, split.train, split.excluded, protocol.roi_size)
    val = load_cases(openkbp, split.val, split.excluded, protocol.roi_size)
    labels = [read_full_label(openkbp, case) for case in val]
    settings = replace(protocol.segmentation, **changes)
    started = time.perf_counter()
    cases = training_cases(train, patients, seed)
    model = finetune_segmentation(weights, cases, settings, seed=seed)
    trained = time.perf_counter() - started
    dice = evaluate(model, val, labels, settings)
    with np.errstate(invalid="ignore"):
        per_organ = np.nanmean(dice, axis=0)
    return {
        "weights": weights,
        "patients": patients,
        "seed": seed,
        "settings": asdict(settings),
        "val_mean_dice": float(np.nanmean(per_organ)),
        "val_dice_per_organ": [round(float(d), 4) for d in per_organ],
        "train_seconds": trained,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openkbp", required=True)
    parser.add_argument("--weights", action="append", required=True)
    parser.add_argument("--set", action="append", default=[], dest="changes")
    parser.add_argument("--patients", type=int, action="append")
    parser.add_argument("--seed", type=int, action="append")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    variants = [
        (w, parse_changes(c), n, seed)
        for c in args.changes or [""]
        for n in args.patients or [5]
        for seed in args.seed or [0]
        for w in args.weights
    ]
    with ProcessPoolExecutor(2) as pool:
        futures = [pool.submit(run, args.openkbp, *variant) for variant in variants]
        results = [future.result() for future in futures]
    for (weights, changes, patients, seed), r in zip(variants, results, strict=True):
        print(f"{weights} {changes} {patients} patients, seed {seed}: "
              f"val mean Dice {r['val_mean_dice']:.3f} "
              f"({r['train_seconds']:.0f} s training)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    record["runs"] += results
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
