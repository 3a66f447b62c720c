"""Sliding-window segmentation of whole CTs: seconds and peak memory as the volume grows.

A real chest/neck CT (TCGA-THCA, 256 x 256 x 269 voxels of 1.95 x 1.95 x 2.5 mm, from
``../shared/data/ct_volumes_more``) is resampled to 1 mm as ``finetune-volumes`` does and
cropped to each size (zero-padded where it is shorter), then segmented by
``predict_labels`` (96^3 Gaussian-weighted windows, 2 per batch) with the skip U-Net of
the bundled ``unet3d_openct_small`` encoder and 8 classes. Each size runs in a fresh
subprocess; peak memory is the resident-set high-water mark (VmHWM, reset after the
imports, the model and the volume are in memory), so what it measures is inference:

    working memory = peak growth - the blended logits and window counts MONAI keeps for
                     the whole volume (classes + 1 floats per voxel)

The goal: working memory bounded by the window batch, not the volume.

    python benchmarks/bench_sliding_window.py [--overlap 0.25] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from machine_info import machine

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT.parent / "shared" / "data" / "ct_volumes_more" / "tcga_thca_DE-A4MA_ct.nii.gz"
SIZES = [(256, 256, 150), (512, 512, 150), (512, 512, 300)]
CLASSES = 8

SCRIPT = """
import json, sys, time
import numpy as np, torch
import pcrlv2_hub
from pcrlv2_hub.finetune.inference import predict_labels
from pcrlv2_hub.pretrain.volumes import Preprocessing, read_image, window
import SimpleITK as sitk

def status_mib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024

path, size = sys.argv[1], json.loads(sys.argv[2])
overlap, classes = float(sys.argv[3]), int(sys.argv[4])
preprocessing = Preprocessing(spacing=(1.0, 1.0, 1.0))
ct = read_image(path, preprocessing, resampled=True)
voxels = window(sitk.GetArrayFromImage(ct).transpose(2, 1, 0), preprocessing)
volume = np.zeros(size, np.float32)
take = [min(a, b) for a, b in zip(size, voxels.shape)]
volume[: take[0], : take[1], : take[2]] = voxels[: take[0], : take[1], : take[2]]
image = torch.from_numpy(volume)[None]
del voxels
model = pcrlv2_hub.load_encoder("unet3d_openct_small", segmentation_classes=classes)
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
base = status_mib("VmRSS:")
start = time.perf_counter()
labels = predict_labels(model, image, (96, 96, 96), overlap=overlap, windows_per_batch=2)
seconds = time.perf_counter() - start
peak = status_mib("VmHWM:") - base
voxels = int(np.prod(size))
kept = voxels * (classes + 1) * 4 / 2**20
print(json.dumps({"size": size, "seconds": seconds, "peak_growth_mib": peak,
                  "volume_mib": voxels * 4 / 2**20, "whole_volume_outputs_mib": kept,
                  "working_mib": peak - kept, "threads": torch.get_num_threads()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sliding_window.json")
    args = parser.parse_args()
    rows = []
    for size in SIZES:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                SCRIPT,
                str(CT),
                json.dumps(size),
                str(args.overlap),
                str(CLASSES),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    document = {
        "command": f"python benchmarks/bench_sliding_window.py --overlap {args.overlap}",
        "machine": machine(),
        "ct": str(CT.relative_to(ROOT.parent)),
        "window": [96, 96, 96],
        "windows_per_batch": 2,
        "classes": CLASSES,
        "overlap": args.overlap,
        "rows": rows,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
