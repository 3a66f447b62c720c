"""``pcrlv2-hub pretrain | export | push``: regenerate PCRLv2 weights and publish them."""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..pretrain.volumes import Preprocessing

PRETRAIN_DESCRIPTION = """\
Pretrain a PCRLv2 network on your own CT volumes (--dim 3: NIfTI, MetaImage .mhd/.raw,
DICOM series folders, .npy/.npz) or chest X-rays (--dim 2: PNG, JPEG, DICOM), then export
safetensors + model card to OUTPUT/export. Unset values follow the paper (3D: lr 1e-3,
batch 32; 2D: lr 1e-2, batch 64; SGD momentum 0.9, weight decay 1e-4, cosine learning
rate per epoch, 240 epochs); a --config JSON file sets any of them, and flags override it.

Without --data (and no data in --config) a short demo runs on the real CT (or, with
--dim 2, X-ray) samples shipped with the package, exports, loads the export with
pcrlv2_hub and prints its encoder's feature shapes. Run again, it writes to
pcrlv2_pretrain_2, _3 ... rather than refusing the folder of the earlier demo.

Many GPUs or nodes: launch the same command with torchrun, e.g.
  torchrun --nproc_per_node 8 -m pcrlv2_hub.cli pretrain --data DIR
--imagenet-init (2D) downloads timm's ImageNet ResNet-18 weights from the Hugging Face Hub
and fails with a clear error when offline (unless they are already cached).
"""


ZOO_MODEL = "unet3d_openct_small"
"""The zoo model the demo ends with: its weights ship inside the package."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..pretrain.config import add_config_arguments

    parser = subparsers.add_parser(
        "pretrain",
        help="PCRLv2 pretraining on your volumes or X-rays (a demo without --data)",
        description=PRETRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="settings as a JSON object")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its last checkpoint, exactly",
    )
    parser.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue the run in --output if it has a checkpoint, else start it: for "
        "torchrun --max-restarts, which restarts workers with the same command",
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=pretrain_command)

    parser = subparsers.add_parser(
        "export", help="training checkpoint -> safetensors, model card, manifest entry"
    )
    parser.add_argument("checkpoint", type=Path, metavar="CKPT", help="last.pt or a run folder")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--name", help="zoo name for the manifest entry")
    parser.set_defaults(handler=export_command)

    parser = subparsers.add_parser(
        "push", help="upload an exported folder to the Hugging Face Hub (needs a token)"
    )
    parser.add_argument("folder", type=Path, metavar="DIR")
    parser.add_argument("--repo-id", required=True, help="ORG/NAME on the Hugging Face Hub")
    parser.add_argument("--revision", help="branch to commit to (default: main)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.set_defaults(handler=push_command)


def pretrain_command(args: argparse.Namespace) -> int:
    import os
    import sys

    from ..pretrain.checkpoint import LAST, PREVIOUS
    from ..pretrain.config import config_from_arguments, demo_settings
    from ..pretrain.trainer import pretrain, read_run_config

    given = config_from_arguments(args)
    if args.auto_resume:
        args.resume = any((Path(given.output) / name).exists() for name in (LAST, PREVIOUS))
    if args.resume:
        base = read_run_config(given.output)
    elif given.data is None:
        base = {**demo_settings(given.dim), "output": _unused_output(given.output)}
    else:
        base = {}
    config = config_from_arguments(args, base)
    demo = not args.resume and given.data is None
    if demo:
        print(f"No --data: a short demo on the {config.dim}D samples in {config.data}, "
              f"written to {config.output}.")  # fmt: skip
    summary = pretrain(config, resume=args.resume, command=" ".join(["pcrlv2-hub", *sys.argv[1:]]))
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports for everyone
    if summary.interrupted:
        print(f"Stopped at step {summary.step}; checkpoint {summary.checkpoint}.")
        print(f"Continue with: pcrlv2-hub pretrain --resume --output {summary.output}")
        return 0
    losses = ", ".join(f"{k} {v:.4f}" for k, v in summary.losses.items())
    print(f"Trained {summary.step} steps in {summary.seconds:.0f} s; final losses: {losses}.")
    print(f"Data: {summary.data['used']} of {summary.data['found']} files used", end="")
    skipped = summary.data["skipped"]
    print(f"; skipped {len(skipped)}: {', '.join(s['path'] for s in skipped)}" if skipped else ".")
    print(f"Checkpoint: {summary.checkpoint}")
    if summary.export:
        print(f"Exported: {summary.export}")
        if demo:
            _show_features(summary.export, config.dim)
    if demo:
        _show_zoo_model()
    return 0


def _unused_output(folder: str) -> str:
    """``folder``, or the first of ``folder_2``, ``folder_3`` ... that holds no run yet.

    Only the demo's folder moves aside like this (an --output given on the command line
    or in --config still wins over it); a real run never silently changes folders.
    """
    from ..pretrain.checkpoint import LAST

    candidates = itertools.chain([folder], (f"{folder}_{n}" for n in itertools.count(2)))
    return next(c for c in candidates if not (Path(c) / LAST).exists())


def _show_features(weights: str, dim: int) -> None:
    """The last link of the demo chain: load the export and run it on a real sample."""
    import torch

    import pcrlv2_hub

    encoder = pcrlv2_hub.load_encoder(weights=weights)
    sample, image = _sample_input(dim)
    with torch.no_grad():
        features = encoder(image)
    print(f"pcrlv2_hub.load_encoder(weights={weights!r}) on {sample} {tuple(image.shape)}:")
    info = encoder.feature_info
    for feature, channels, stride in zip(features, info.channels(), info.reduction(), strict=True):
        print(f"  stride {stride:>2}: {tuple(feature.shape)} ({channels} channels)")


def _show_zoo_model() -> None:
    """The demo's end: the zoo model that ships inside the package, loaded by name offline."""
    import torch
    import torch.nn.functional as F

    import pcrlv2_hub
    from pcrlv2_hub.pretrain.corruptions import z_normalise

    from ..pretrain.volumes import Preprocessing

    spec = pcrlv2_hub.model_info(ZOO_MODEL)["input"]
    model = pcrlv2_hub.load(ZOO_MODEL)
    size = spec["patch_size"]
    path, crop = _sample_ct_crop(size, Preprocessing(spacing=spec["view_spacing_mm"]))
    with torch.no_grad():
        restored = model(z_normalise(crop.clone())).restoration
    print(f"pcrlv2_hub.load({ZOO_MODEL!r}): the pretrained zoo model bundled in the package, "
          f"sha256-verified, no network. It restores a {tuple(size)} crop of {path.name} "
          f"with MSE {F.mse_loss(restored, crop).item():.4f} (the crop's own variance: "
          f"{crop.var().item():.4f}).")  # fmt: skip


def _sample_input(dim: int) -> tuple[str, object]:
    """A real input from the shipped samples: a CT crop, or an ImageNet-normalised X-ray."""
    import torch

    from ..pretrain.config import SAMPLE_DATA

    if dim == 3:
        path, crop = _sample_ct_crop((64, 64, 32))
        return f"a 64x64x32 crop of {path.name}", crop
    from ..pretrain.views import IMAGENET_MEAN, IMAGENET_STD
    from ..pretrain.views2d import find_images, read_image

    path = find_images(SAMPLE_DATA / "chestxray")[0]
    image = read_image(path).float().div(255)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return path.name, ((image - mean) / std)[None]


def _sample_ct_crop(size: Sequence[int], preprocessing: Preprocessing | None = None):
    """The centre crop of ``size`` of the shipped chest CT, as a (1, 1, *size) tensor."""
    import torch

    from ..pretrain.config import SAMPLE_DATA
    from ..pretrain.volumes import Preprocessing, read_volume

    path = SAMPLE_DATA / "chest_ct.nii.gz"
    volume = torch.from_numpy(read_volume(path, preprocessing or Preprocessing()))
    starts = [(n - c) // 2 for n, c in zip(volume.shape, size, strict=True)]
    return path, volume[tuple(slice(s, s + c) for s, c in zip(starts, size, strict=True))][
        None, None
    ]


def export_command(args: argparse.Namespace) -> int:
    from ..pretrain.export import export_checkpoint

    release = export_checkpoint(args.checkpoint, args.out, name=args.name)
    print(f"Wrote {release.weights_path} (sha256 {release.sha256}, {release.size_bytes} bytes),")
    print(f"      {release.card_path} and {release.snippet_path}.")
    print(f"Load it with: pcrlv2_hub.load(weights={str(release.weights_path)!r})")
    return 0


def push_command(args: argparse.Namespace) -> int:
    from ..pretrain.export import push_release

    commit = push_release(args.folder, args.repo_id, revision=args.revision, private=args.private)
    print(f"Uploaded {args.folder} to {args.repo_id}: {commit.commit_url}")
    print(json.dumps({"repo_id": args.repo_id, "revision": commit.oid}, indent=2))
    print("Pin this revision in the manifest entry's weights.revision.")
    return 0
