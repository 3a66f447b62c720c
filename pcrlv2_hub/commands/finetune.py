"""``pcrlv2-hub finetune``: transfer a (pretrained) encoder to a labelled task."""

from __future__ import annotations

import argparse

from ..finetune.settings import OPTIMIZERS, TrainingSettings

TASK_CHOICES = ("classify3d", "segment3d", "classify2d")
DEFAULTS = TrainingSettings()

DESCRIPTION = """\
Fine-tune a PCRLv2 encoder on labelled data and write metrics (AUC and accuracy, or Dice
per class, on train/val/test) to OUTPUT/results.json.

Tasks: classify3d (encoder + average pooling + linear head), segment3d (the encoder in a
U-Net with skip connections; Dice + cross-entropy loss), classify2d (ResNet-18 on chest
X-rays). Inputs are normalised as in pretraining: 3D volumes to zero mean and unit
variance each, 2D grayscale copied to RGB and ImageNet-normalised.

--data layouts:
  FILE.npz     MedMNIST-style {train,val,test}_images and _labels (segment3d: _masks);
               integer images are scaled to [0, 1] by their type's maximum
  FILE.csv     volumes with the columns image,label,split (paths relative to the CSV),
               or a folder holding labels.csv
  FOLDER       segment3d: {train,val,test}/images/NAME with {train,val,test}/masks/NAME
               classify2d: {train,val,test}/CLASS_NAME/*.png (classes in sorted order)
               classify3d: LUNA16 (subset0/ ... subset9/ with SERIESUID.mhd, and
               candidates_V2.csv): a 64x64x32 crop around each candidate, every nodule
               and 10 seeded non-nodules per nodule; subsets 0-4 train, 5-6 val, 7-9 test

Inputs whose size the network's stride does not divide (e.g. 28^3 for the 3D stride 8)
are zero-padded, centred, to the next multiple; segmentation outputs are cropped back.
Early stopping keeps the epoch with the lowest validation loss.
"""


_DEFAULT = "default: %(default)s"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained encoder on labelled data",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, choices=TASK_CHOICES)
    parser.add_argument("--data", required=True, help="dataset file or folder (layouts above)")
    parser.add_argument(
        "--weights",
        default="scratch",
        help="zoo name, hf-hub:ORG/REPO[@REV], local .safetensors/.pt, 'scratch' (the task's "
        "default architecture, random init) or 'scratch:SOURCE' (SOURCE's architecture, "
        "random init); default: %(default)s",
    )
    parser.add_argument(
        "--label-fraction",
        type=float,
        default=1.0,
        help="fraction of the training labels to use, per class, chosen by --seed; " + _DEFAULT,
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds labels, init and batches; " + _DEFAULT
    )
    parser.add_argument(
        "--linear-probe",
        action="store_true",
        help="freeze the encoder and train only the head (or decoder)",
    )
    parser.add_argument(
        "--in-channels",
        type=int,
        help="adapt the encoder's first convolution to N input channels (e.g. 4 for MRI)",
    )
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="at most; " + _DEFAULT)
    parser.add_argument(
        "--protocol",
        choices=("luna16",),
        help="luna16: --data is a LUNA16 folder, read as nodule-candidate crops as in Models "
        "Genesis and PCRLv2 (classify3d; batch 24 unless --batch-size)",
    )
    parser.add_argument(
        "--batch-size", type=int, help=f"default: {DEFAULTS.batch_size} (luna16: 24)"
    )
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="learning rate; " + _DEFAULT)
    parser.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help=_DEFAULT)
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=DEFAULTS.optimizer,
        help="SGD has momentum 0.9; " + _DEFAULT,
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=DEFAULTS.patience,
        help="stop after this many epochs without a better validation loss; " + _DEFAULT,
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        help="CSV of volumes: resample each to this spacing in mm (real scans of any size)",
    )
    parser.add_argument(
        "--volume-size",
        type=int,
        nargs=3,
        help="CSV of volumes: then centre-crop or zero-pad each to this size",
    )
    parser.add_argument("--device", help="e.g. cpu, cuda, cuda:1; default: cuda if available")
    parser.add_argument("--output", required=True, help="folder for results.json")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..finetune.run import FinetuneConfig, finetune

    config = FinetuneConfig(
        task=args.task,
        data=args.data,
        weights=args.weights,
        label_fraction=args.label_fraction,
        seed=args.seed,
        in_channels=args.in_channels,
        training=TrainingSettings(
            epochs=args.epochs,
            batch_size=args.batch_size or (24 if args.protocol else DEFAULTS.batch_size),
            lr=args.lr,
            weight_decay=args.weight_decay,
            optimizer=args.optimizer,
            patience=args.patience,
            linear_probe=args.linear_probe,
        ),
        device=args.device,
        spacing=tuple(args.spacing) if args.spacing else None,
        volume_size=tuple(args.volume_size) if args.volume_size else None,
        protocol=args.protocol,
    )
    results = finetune(config, output=args.output).results
    test = results["metrics"]["test"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
    print(f"test: {shown} (best epoch {results['best_epoch']}); wrote {args.output}/results.json")
    return 0
