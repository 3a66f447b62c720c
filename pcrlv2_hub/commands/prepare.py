"""``pcrlv2-hub prepare``: decode an archive of volumes into the cache before training."""

from __future__ import annotations

import argparse
from pathlib import Path

PREPARE_DESCRIPTION = """\
Decode every CT/MRI volume of --data (resampled and windowed as pretraining wants them)
into the volume cache, --workers processes at a time, so that `pcrlv2-hub pretrain` with
the same --data, --preprocess and --cache-dir starts training at once. What is cached
already is not decoded again; a run that is killed leaves only complete entries and the
next one finishes the job. Unusable volumes are skipped with the reason.

Under torchrun each process decodes its share (of its node's cache; of all, with
--shared-cache) and waits for the others on the cache itself.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..pretrain.config import parse_assignment

    parser = subparsers.add_parser(
        "prepare",
        help="decode the volumes of --data into the cache, in parallel",
        description=PREPARE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="a folder, a glob, or a list file")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="a pretraining configuration to take the settings from")  # fmt: skip
    parser.add_argument("--workers", dest="prepare_workers", type=int,
                        help="decoding processes (default: all cores)")  # fmt: skip
    parser.add_argument("--cache-dir", help="the cache (default $PCRLV2_HUB_CACHE or ~/.cache)")
    parser.add_argument(
        "--preprocess", dest="preprocessing", action="append", default=None,
        type=parse_assignment,
        metavar="NAME=JSON", help="as for pretrain, e.g. modality=mri (repeatable)",
    )  # fmt: skip
    parser.add_argument("--shared-cache", action="store_true", default=None,
                        help="under torchrun: the cache is shared by all nodes")  # fmt: skip
    parser.add_argument("--prepare-timeout", type=float,
                        help="seconds to wait for other processes' shares")  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    parser.set_defaults(handler=prepare_command)


def prepare_command(args: argparse.Namespace) -> int:
    import os

    from ..pretrain.config import config_from_arguments
    from ..pretrain.preparation import prepare_configured_volumes

    config = config_from_arguments(args)
    prepared = prepare_configured_volumes(config, config.progress)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports for everyone
    summary = prepared.summary
    cache = prepared.volumes[0].path.parent
    print(f"{summary.used} of {summary.found} volumes ready in {cache} "
          f"({prepared.cache_bytes / 2**30:.2f} GiB); this process decoded {prepared.decoded} "
          f"in {prepared.seconds:.1f} s.")  # fmt: skip
    for path, reason in summary.skipped:
        print(f"  skipped {path}: {reason}")
    for path, note in summary.notes:
        print(f"  note {path}: {note}")
    return 0
