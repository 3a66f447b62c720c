"""Fine-tune a PCRLv2 encoder to classify AdrenalMNIST3D: normal adrenal gland or mass.

Uses the 28^3 AdrenalMNIST3D shipped with pcrlv2_hub (1,188 train, 98 val, 298 test;
volumes are zero-padded to 32^3, a multiple of the encoder's stride). The default
--weights scratch trains the unet3d_luna architecture from random weights so that the
script runs offline; real use passes --weights unet3d_luna (or a pretrained file) and
compares it with scratch at the same --seed and --label-fraction. The defaults take a few
minutes on a 2-core CPU (the full-size network), seconds on a GPU. The command line does
the same: pcrlv2-hub finetune --task classify3d --data FILE.npz ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pcrlv2_hub
from pcrlv2_hub.finetune import FinetuneConfig, TrainingSettings, finetune

DATA = Path(pcrlv2_hub.__file__).parent / "sample_data" / "adrenalmnist3d.npz"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--weights", default="scratch", help="zoo name, hf-hub:..., file, scratch")
parser.add_argument("--label-fraction", type=float, default=0.1, help="share of train labels")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--linear-probe", action="store_true", help="train the head only")
parser.add_argument("--output", help="folder for results.json")
args = parser.parse_args()

config = FinetuneConfig(
    task="classify3d",
    data=str(DATA),
    weights=args.weights,
    label_fraction=args.label_fraction,
    seed=args.seed,
    training=TrainingSettings(epochs=args.epochs, linear_probe=args.linear_probe),
)
run = finetune(config, output=args.output)

for split, metrics in run.results["metrics"].items():
    print(f"{split:5}  AUC {metrics['auc']:.3f}  accuracy {metrics['accuracy']:.3f}")
print(f"kept epoch {run.results['best_epoch']}; the fine-tuned network is run.model")
