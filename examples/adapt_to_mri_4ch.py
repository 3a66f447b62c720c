"""Adapt a 1-channel CT encoder to 4-channel MRI input (as for BraTS: T1, T1ce, T2, FLAIR).

load_encoder(..., in_channels=4) sums the first convolution's kernel over its input
channels and spreads it evenly over the four new ones. Four copies of one volume then give
exactly the features the original encoder gives that volume (checked below), and
fine-tuning learns from there how the channels differ.

No MRI is shipped, so the four channels here are the sample CT under four intensity
windows: a stand-in with the right shape, not MRI.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

import pcrlv2_hub
from pcrlv2_hub.finetune import weights_option
from pcrlv2_hub.models.encoders import adapt_in_channels
from pcrlv2_hub.pretrain.volumes import Preprocessing, read_volume

CT = Path(pcrlv2_hub.__file__).parent / "sample_data" / "chest_ct.nii.gz"
WINDOWS_HU = {
    "lung": (-1000, 0),
    "soft tissue": (-160, 240),
    "bone": (-200, 1300),
    "full": (-1000, 1000),
}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--weights", default="scratch", help="zoo name, hf-hub:..., file, scratch")
parser.add_argument("--crop", type=int, default=48, help="centre crop edge (a multiple of 8)")
args = parser.parse_args()


def window(low: float, high: float) -> torch.Tensor:
    """The CT on its own grid, scaled to [0, 1] over [low, high] HU, centre-cropped and
    z-normalised (zero mean, unit variance), as the pretrained network's inputs were."""
    volume = torch.from_numpy(read_volume(CT, Preprocessing(spacing=None, window=(low, high))))
    corner = [(size - args.crop) // 2 for size in volume.shape]
    crop = volume[tuple(slice(c, c + args.crop) for c in corner)]
    return (crop - crop.mean()) / crop.std()


ct_encoder = pcrlv2_hub.load_encoder(**weights_option(args.weights, "unet3d_luna"))
# What load_encoder(..., in_channels=4) does at load time; here on a copy, to compare the two.
mri_encoder = adapt_in_channels(copy.deepcopy(ct_encoder), 4)

one = window(-1000, 1000)[None, None]  # (1, 1, D, H, W)
four = torch.stack([window(*w) for w in WINDOWS_HU.values()])[None]  # (1, 4, D, H, W)
with torch.no_grad():
    same = all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(ct_encoder(one), mri_encoder(one.repeat(1, 4, 1, 1, 1)), strict=True)
    )
    features = mri_encoder(four)
print(f"4 copies of one volume give the CT encoder's features: {same}")
print(f"4-channel input {tuple(four.shape)} -> deepest map {tuple(features[-1].shape)}")
