"""The ``pcrlv2-hub`` command line: one sub-command module per capability."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import PCRLv2HubError


def build_parser() -> argparse.ArgumentParser:
    from .commands import COMMAND_MODULES

    parser = argparse.ArgumentParser(
        prog="pcrlv2-hub",
        description="PCRLv2 pretrained models for medical imaging: browse, download, "
        "verify, convert, pretrain and fine-tune.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; package errors become one readable line and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except PCRLv2HubError as error:
        print(f"pcrlv2-hub {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
