"""Measure the intensity-normalisation gap between pretraining and the OpenKBP benchmark.

    python benchmarks/openct/normalisation_gap.py --openkbp ../shared/data/openkbp_oars

Pretraining z-normalises every crop on its own (``pretrain/corruptions.py``); the benchmark
z-normalises each patient's region of interest once, so a fine-tuning patch arrives with
the mean and spread of its place in the body. This draws patches of the cpu protocol's size
from the *training* patients (never the test ones), feeds each set of weights both versions
of every patch, and prints how far the patch statistics stray from (0, 1) and the median
cosine similarity of the encoder's features per stage, with BatchNorm in eval mode (the
pretraining's running statistics) and in train mode (batch statistics, as in fine-tuning).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import pcrlv2_hub
from pcrlv2_hub.benchmark.jobs import intensity_window
from pcrlv2_hub.benchmark.openkbp import load_cases, read_split
from pcrlv2_hub.benchmark.protocol import PROTOCOLS
from pcrlv2_hub.pretrain.corruptions import z_normalise

ENCODERS = {  # label -> load_encoder arguments
    "PCRLv2": {"name": "unet3d_openct_small"},
    "restoration only": {"weights": "benchmarks/openct/weights/restoration.safetensors"},
    "comparison only": {"weights": "benchmarks/openct/weights/comparison.safetensors"},
}


def draw_patches(openkbp: str, patients: int, count: int, seed: int) -> torch.Tensor:
    """``count`` random patches (N, 1, *patch) of ROI-normalised training patients."""
    split = read_split()
    protocol = PROTOCOLS["cpu"]
    window = intensity_window("unet3d_openct_small")  # all three were pretrained with it
    names = split.train[:patients]
    cases = load_cases(openkbp, names, split.excluded, tuple(protocol.roi_size), window)
    size = protocol.segmentation.patch_size
    rng = np.random.default_rng(seed)
    patches = []
    for _ in range(count):
        image = cases[rng.integers(len(cases))].image
        shape = image.shape[1:]
        start = [int(rng.integers(0, d - p + 1)) for d, p in zip(shape, size, strict=True)]
        box = tuple(slice(s, s + p) for s, p in zip(start, size, strict=True))
        patches.append(image[(slice(None), *box)])
    return torch.from_numpy(np.stack(patches))


def feature_similarity(encoder: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Median cosine similarity, per encoder stage, of the features of ``a`` and ``b``."""
    with torch.no_grad():
        return [
            torch.nn.functional.cosine_similarity(fa.flatten(1), fb.flatten(1)).median().item()
            for fa, fb in zip(encoder(a), encoder(b), strict=True)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openkbp", required=True)
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--patches", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    roi_normalised = draw_patches(args.openkbp, args.patients, args.patches, args.seed)
    patch_normalised = z_normalise(roi_normalised.clone())
    dims = (1, 2, 3, 4)
    mean, std = roi_normalised.mean(dim=dims), roi_normalised.std(dim=dims)
    print(
        f"ROI-normalised patches ({args.patches}): mean median {mean.median():.2f} "
        f"[{mean.min():.2f}, {mean.max():.2f}], std median {std.median():.2f} "
        f"[{std.min():.2f}, {std.max():.2f}]"
    )
    for label, arguments in ENCODERS.items():
        encoder = pcrlv2_hub.load_encoder(**arguments)
        for mode in ("eval", "train"):
            encoder.train(mode == "train")
            stages = feature_similarity(encoder, roi_normalised, patch_normalised)
            rounded = [round(s, 3) for s in stages]
            print(f"{label:17s} BatchNorm {mode:5s} cosine per stage: {rounded}")


if __name__ == "__main__":
    main()
