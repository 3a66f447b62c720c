"""Segmentation with the PCRLv2 encoder inside a U-Net *with* skip connections.

The authors pretrain without skips and advise adding them back for segmentation:
load_encoder(..., segmentation_classes=K) does, and reports which tensors it loaded.

Data, honestly: the only labelled 3D data shipped is AdrenalMNIST3D, whose volumes are soft
adrenal-gland masks (28^3, 0..255). The target here is that mask thresholded at 50 %, so
the task is easy by construction: the script shows the plumbing (padding to the stride,
Dice + cross-entropy, Dice per class), not a benchmark. For real image/mask pairs use
`pcrlv2-hub finetune --task segment3d --data FOLDER`.

The default --weights scratch trains a quarter-width network from random weights, so the
script runs offline in about a minute; real use passes --weights unet3d_luna or a file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import pcrlv2_hub
from pcrlv2_hub.finetune import weights_option
from pcrlv2_hub.finetune.losses import dice_ce_loss
from pcrlv2_hub.finetune.metrics import dice_per_class

DATA = Path(pcrlv2_hub.__file__).parent / "sample_data" / "adrenalmnist3d.npz"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--weights", default="scratch", help="zoo name, hf-hub:..., file, scratch")
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--batch-size", type=int, default=4)
args = parser.parse_args()


def volumes_and_masks(volumes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs z-normalised per volume, as in pretraining, and the thresholded masks."""
    images = torch.from_numpy(volumes / 255).float()
    mean, std = images.mean(dim=(1, 2, 3), keepdim=True), images.std(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) / std)[:, None], (images > 0.5).long()  # (N, 1, 28^3), (N, 28^3)


def padded(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits for inputs of any size: pad to the stride (28 -> 32), crop the output back."""
    x, crop = pcrlv2_hub.pad_to_multiple(x, model.stride)
    return model(x)[crop]


torch.manual_seed(0)
with np.load(DATA) as data:
    train_x, train_y = volumes_and_masks(data["train_images"][:64])
    test_x, test_y = volumes_and_masks(data["test_images"][:16])
source = weights_option(args.weights, "unet3d_luna")
# Without pretrained weights, a quarter-width network keeps this demo short on a CPU.
widths = {} if source["pretrained"] else {"widths": (16, 32, 64, 128)}
model = pcrlv2_hub.load_encoder(**source, **widths, segmentation_classes=2)
print(model.transfer_report)

optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model.train()
for step in range(1, args.steps + 1):
    batch = torch.randint(len(train_x), (args.batch_size,))
    loss = dice_ce_loss(padded(model, train_x[batch]), train_y[batch])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: Dice + CE loss {loss.item():.3f}")

model.eval()
with torch.no_grad():
    predicted = padded(model, test_x).argmax(dim=1)
background, gland = dice_per_class(predicted.numpy(), test_y.numpy(), num_classes=2)
print(f"test Dice: background {background:.3f}, adrenal gland {gland:.3f}")
