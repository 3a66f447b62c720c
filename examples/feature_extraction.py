"""Feature extraction: PCRLv2 features of a CT volume, as multi-scale maps and as one vector.

Runs offline on the chest CT shipped with pcrlv2_hub. Real use passes pretrained weights:
a zoo name (--weights unet3d_luna), hf-hub:ORG/REPO, or a file from `pcrlv2-hub pretrain`.
The default, `scratch`, is the same network with random weights: right shapes, meaningless
features.

    python examples/feature_extraction.py --weights unet3d_luna
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pcrlv2_hub
from pcrlv2_hub.finetune import weights_option
from pcrlv2_hub.pretrain.volumes import read_volume

CT = Path(pcrlv2_hub.__file__).parent / "sample_data" / "chest_ct.nii.gz"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--weights", default="scratch", help="zoo name, hf-hub:..., file, scratch")
parser.add_argument("--crop", type=int, default=64, help="centre crop edge (a multiple of 8)")
args = parser.parse_args()

# As in pretraining: 1 mm voxels, [-1000, 1000] HU scaled to [0, 1], axes (x, y, z), and
# the crop z-normalised (the network's inputs had zero mean and unit variance).
volume = torch.from_numpy(read_volume(CT))
corner = [(size - args.crop) // 2 for size in volume.shape]
x = volume[tuple(slice(c, c + args.crop) for c in corner)][None, None]  # (1, 1, D, H, W)
x = (x - x.mean()) / x.std()

# pool="avg" gives one vector per volume; its .encoder gives the feature maps.
model = pcrlv2_hub.load_encoder(**weights_option(args.weights, "unet3d_luna"), pool="avg")
with torch.no_grad():
    maps = model.encoder(x)
    vector = model(x)

info = model.feature_info
for feature, channels, stride in zip(maps, info.channels(), info.reduction(), strict=True):
    print(f"feature map {tuple(feature.shape)}: {channels} channels, stride {stride}")
print(f"pooled vector {tuple(vector.shape)}, e.g. for a linear classifier or retrieval")
