"""``pcrlv2-hub finetune-volumes`` and ``predict``: segmentation of whole CT and MRI volumes."""

from __future__ import annotations

import argparse

FINETUNE_DESCRIPTION = """\
Fine-tune a PCRLv2 encoder, inside a U-Net with skip connections, on whole CT or MRI
volumes by random patches (MONAI), then segment the test cases by sliding window and
write Dice and HD95 per case and class to RUN/results.json, with RUN/example.png.

--data layouts (paths relative to the dataset):
  DIR/dataset.json   Medical Segmentation Decathlon: "labels", "training" [{"image",
                     "label", optional "labelled": [classes contoured in that case]}], "test"
  DIR/CASE/          BraTS: CASE_t1, CASE_t1ce, CASE_t2, CASE_flair (.nii.gz) as four
                     channels and CASE_seg.nii.gz
  FILE.csv           columns image (or image_* per channel), label, optional split
                     (train/val/test) and labelled ("1 2 4")
Volumes: NIfTI, MHA/MHD, NRRD, DICOM series folders. Without a split in the data, cases
are shuffled by --seed and 20 % each held out for validation and test.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..finetune.patch_training import PatchSettings

    defaults = PatchSettings()
    parser = subparsers.add_parser(
        "finetune-volumes",
        help="fine-tune on whole CT/MRI volumes by patches (segmentation)",
        description=FINETUNE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="dataset folder or CSV (layouts above)")
    parser.add_argument(
        "--weights",
        default="scratch",
        help="as for `finetune`: zoo name, file, scratch or scratch:SOURCE",
    )
    parser.add_argument("--output", required=True, help="the run's folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output")
    parser.add_argument("--train-cases", type=int, help="use only N training cases (by --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--protocol",
        choices=("brats2018", "lits2017"),
        help="the paper's settings for that task (normalisation, spacing, patch size, "
        "reported regions); the flags below override them",
    )
    parser.add_argument(
        "--modality",
        choices=("ct", "mri"),
        help="ct: window --window HU; mri: 0.5-99.5 percentiles per volume; default: ct",
    )
    parser.add_argument("--window", type=float, nargs=2, help="HU; default: -1000 1000")
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        help="resample to this spacing in mm (labels: nearest neighbour); default: 1 1 1",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        help=f"default: {' '.join(map(str, defaults.patch_size))}",
    )
    parser.add_argument(
        "--foreground-share",
        type=float,
        default=defaults.foreground_share,
        help="share of patches centred on a labelled voxel",
    )
    parser.add_argument("--patches-per-case", type=int, default=defaults.patches_per_case)
    parser.add_argument("--cases-per-step", type=int, default=defaults.cases_per_step)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--validate-every", type=int, default=defaults.validate_every)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument(
        "--mirror-axes",
        type=int,
        nargs="*",
        default=defaults.mirror_axes,
        help="axes flipped at random (0 1 2 = x y z); leave out 0 when classes have a side",
    )
    parser.add_argument("--device", help="e.g. cpu, cuda; default: cuda if available")
    parser.set_defaults(handler=run_finetune)

    predict = subparsers.add_parser(
        "predict",
        help="segment whole volumes with a finetune-volumes run",
        description="Sliding-window inference (Gaussian-weighted overlapping windows) of a "
        "`finetune-volumes` run on every volume of --input (or every case of a dataset "
        "layout, for several channels); one NAME.nii.gz label map per case, on the "
        "input's own grid (size, spacing, origin, direction).",
    )
    predict.add_argument("--run", required=True, help="a finetune-volumes output folder")
    predict.add_argument("--input", required=True, help="folder of volumes, or a dataset")
    predict.add_argument("--output", required=True, help="folder for the label maps")
    predict.add_argument(
        "--overlap", type=float, help="of neighbouring windows; default: the run's"
    )
    predict.add_argument("--device")
    predict.set_defaults(handler=run_predict)


def run_finetune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..finetune.patch_training import PatchSettings
    from ..finetune.protocols import get_protocol
    from ..finetune.volume_run import VolumeRunConfig, finetune_volumes
    from ..pretrain.volumes import Preprocessing

    protocol = get_protocol(args.protocol) if args.protocol else None
    preprocessing = protocol.preprocessing if protocol else Preprocessing()
    given = {"spacing": args.spacing, "modality": args.modality, "window": args.window}
    preprocessing = replace(
        preprocessing, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v}
    )
    patch_size = args.patch_size or (
        protocol.patch_size if protocol else PatchSettings().patch_size
    )
    config = VolumeRunConfig(
        data=args.data,
        weights=args.weights,
        train_cases=args.train_cases,
        seed=args.seed,
        preprocessing=preprocessing,
        regions=protocol.regions if protocol else None,
        patches=PatchSettings(
            patch_size=tuple(patch_size),
            foreground_share=args.foreground_share,
            patches_per_case=args.patches_per_case,
            cases_per_step=args.cases_per_step,
            steps=args.steps,
            validate_every=args.validate_every,
            lr=args.lr,
            workers=args.workers,
            mirror_axes=tuple(args.mirror_axes),
        ),
        device=args.device,
    )
    results = finetune_volumes(config, args.output, resume=args.resume)
    summary = results["test"]["summary"]
    if summary is None:
        print(f"trained; no test cases to measure. Wrote {args.output}")
    else:
        print(
            f"test: mean Dice {summary['dice']['mean']}, mean HD95 {summary['hd95_mm']['mean']} mm;"
            f" wrote {args.output}/results.json"
        )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..finetune.prediction import predict_folder

    written = predict_folder(
        args.run, args.input, args.output, overlap=args.overlap, device=args.device
    )
    print(f"wrote {len(written)} label map(s) to {args.output}")
    return 0
