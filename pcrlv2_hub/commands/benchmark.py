"""``pcrlv2-hub benchmark``: what are these weights worth downstream, with few labels?"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
The transfer benchmark: few-label segmentation of seven head-and-neck organs at risk on
OpenKBP CT (fine-tuned skip U-Net, and a linear probe on the frozen encoder) with 1, 2, 5,
10 and all training patients, and AdrenalMNIST3D classification at 5-100 %% labels (fine-
tuned, and logistic regression on the frozen encoder's pooled features), each over 3
seeds, for every --weights.
Dice is measured on a fixed set of test patients (the OpenKBP validation patients) that
no run trains on. Writes OUTPUT/results.json (resumable: run the same command again to
finish a stopped benchmark), OUTPUT/RESULTS.md and OUTPUT/label_efficiency.png.

Example (PCRLv2 against its ablations and random initialisation of the same network):
  pcrlv2-hub benchmark --openkbp shared/data/openkbp_oars \\
      --adrenal shared/data/adrenalmnist3d/adrenalmnist3d.npz \\
      --weights pcrlv2=unet3d_openct_small \\
      --weights restoration=runs/rest/export/model.safetensors \\
      --weights comparison=runs/comp/export/model.safetensors \\
      --weights scratch=scratch:unet3d_openct_small --output bench/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="few-label transfer benchmark of pretrained weights (OpenKBP, AdrenalMNIST3D)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--weights",
        action="append",
        required=True,
        metavar="[LABEL=]SOURCE",
        help="weights to compare (repeat): a zoo name, hf-hub:ORG/REPO[@REV], a local "
        ".safetensors or .pt, or scratch:SOURCE (SOURCE's network, randomly initialised)",
    )
    parser.add_argument("--openkbp", help="OpenKBP folder with images/ and labels/")
    parser.add_argument("--adrenal", help="AdrenalMNIST3D .npz (MedMNIST layout)")
    parser.add_argument("--split", help="patient split JSON (default: the one shipped)")
    parser.add_argument("--protocol", default="cpu", help="cpu (default) or tiny (a smoke test)")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes, one thread each; default: 2"
    )
    parser.add_argument("--output", required=True, help="folder for results and report")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from OUTPUT/results.json"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..benchmark.protocol import get_protocol
    from ..benchmark.report import REPORT, goal_check, load_results, write_report
    from ..benchmark.runner import RESULTS, WeightsSpec, run_benchmark

    output = Path(args.output)
    if args.report_only:
        results = load_results(output / RESULTS)
        write_report(results, output)
    else:
        results = run_benchmark(
            get_protocol(args.protocol),
            [WeightsSpec.parse(w) for w in args.weights],
            output,
            openkbp=args.openkbp,
            split=args.split,
            adrenal=args.adrenal,
            workers=args.workers,
        )
    for row in goal_check(results):
        print(
            f"{row['weights']} vs {row['baseline']}, {row['labels']} patients: "
            f"mean Dice {row['difference']:+.3f}, seeds separated: {row['separated']}"
        )
    print(f"{len(results['records'])} results in {results['seconds'] / 60:.1f} min; "
          f"report: {output / REPORT}")  # fmt: skip
    return 0
