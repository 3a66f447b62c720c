"""Patch training throughput of ``finetune-volumes``: patches per second, end to end.

The five real OpenKBP head-and-neck CTs of ``tests/data/openkbp`` (128^3, 7 organs) as a
Decathlon dataset, resampled to 2 mm, the skip U-Net around the bundled
``unet3d_openct_small`` encoder; each configuration trains for ``--steps`` steps (after
one warm-up run that fills the case cache) and the patches per second of the steps are
reported, with patches drawn in the training process or in one DataLoader worker.

    python benchmarks/bench_patch_training.py [--steps 40] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from machine_info import machine

ROOT = Path(__file__).resolve().parents[1]
OPENKBP = ROOT / "tests" / "data" / "openkbp"
CONFIGS = [  # patch size, cases per step, patches per case, workers
    ((64, 64, 64), 1, 2, 0),
    ((64, 64, 64), 1, 2, 1),
    ((96, 96, 96), 1, 2, 0),
    ((96, 96, 96), 1, 2, 1),
]


def decathlon(folder: Path) -> Path:
    """A dataset.json naming the excerpt's files where they are."""
    training = [
        {"image": str(image), "label": str(OPENKBP / "labels" / image.name)}
        for image in sorted((OPENKBP / "images").glob("*.nii.gz"))
    ]
    organs = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx",
              "Mandible"]  # fmt: skip
    labels = {"0": "background", **{str(i + 1): name for i, name in enumerate(organs)}}
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "training": training}))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/patch_training.json")
    args = parser.parse_args()
    from pcrlv2_hub.finetune.cases import read_cases, split_cases
    from pcrlv2_hub.finetune.networks import build_network
    from pcrlv2_hub.finetune.patch_training import PatchSettings, train_on_patches
    from pcrlv2_hub.finetune.tasks import TASKS
    from pcrlv2_hub.pretrain.volumes import Preprocessing

    work = Path(tempfile.mkdtemp(prefix="bench_patches_"))
    dataset = read_cases(decathlon(work))
    cases = split_cases(dataset, seed=0, fractions=(0.0, 0.0))["train"]
    preprocessing = Preprocessing(spacing=(2.0, 2.0, 2.0))
    rows = []
    for patch, cases_per_step, per_case, workers in CONFIGS:
        settings = PatchSettings(patch_size=patch, cases_per_step=cases_per_step,
                                 patches_per_case=per_case, steps=args.steps,
                                 validate_every=args.steps, workers=workers)  # fmt: skip
        model = build_network(TASKS["segment3d"], "unet3d_openct_small", 8, 1, seed=0)
        run = work / f"run_{patch[0]}_{workers}"
        warm = PatchSettings(**{**settings.__dict__, "steps": 1, "validate_every": 1})
        train_on_patches(model, cases, [], num_classes=8, preprocessing=preprocessing,
                         settings=warm, run_dir=run, log=lambda _: None)  # fmt: skip
        model = build_network(TASKS["segment3d"], "unet3d_openct_small", 8, 1, seed=0)
        start = time.perf_counter()
        train_on_patches(model, cases, [], num_classes=8, preprocessing=preprocessing,
                         settings=settings, run_dir=run, log=lambda _: None)  # fmt: skip
        seconds = time.perf_counter() - start
        patches = args.steps * cases_per_step * per_case
        rows.append({"patch_size": patch, "cases_per_step": cases_per_step,
                     "patches_per_case": per_case, "workers": workers, "steps": args.steps,
                     "seconds": seconds, "patches_per_s": patches / seconds})  # fmt: skip
        print(json.dumps(rows[-1]))
    document = {
        "command": f"python benchmarks/bench_patch_training.py --steps {args.steps}",
        "machine": machine(),
        "data": "tests/data/openkbp (5 real CTs) at 2 mm; unet3d_openct_small skip U-Net",
        "median_patches_per_s": statistics.median(r["patches_per_s"] for r in rows),
        "rows": rows,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
