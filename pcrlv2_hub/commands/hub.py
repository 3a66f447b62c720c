"""``pcrlv2-hub list | info | download | convert | verify``: the model zoo from a shell."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list the zoo's models")
    parser.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. '*chest*'")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=list_command)

    parser = subparsers.add_parser("info", help="everything the manifest says about a model")
    parser.add_argument("name")
    parser.add_argument("--json", action="store_true", help="the manifest entry as JSON")
    parser.set_defaults(handler=info_command)

    parser = subparsers.add_parser(
        "download", help="fetch and verify weights into the cache (for offline use later)"
    )
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("--all", action="store_true", help="every published zoo model")
    parser.add_argument("--to", type=Path, help="also copy each file to DIR/NAME.safetensors")
    parser.add_argument("--revision", help="a Hub revision other than the pinned one")
    parser.add_argument("--cache-dir", type=Path, help="huggingface_hub cache folder")
    parser.set_defaults(handler=download_command)

    parser = subparsers.add_parser(
        "convert", help="official PCRLv2 .pt -> safetensors, model card, manifest entry"
    )
    parser.add_argument("checkpoint", type=Path, metavar="FILE.pt")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--name", help="zoo name for the manifest entry (default: by dataset)")
    parser.set_defaults(handler=convert_command)

    parser = subparsers.add_parser(
        "verify",
        help="sha256, tensor digest, strict load and golden output of a zoo model or a file",
    )
    parser.add_argument("target", metavar="NAME|FILE")
    parser.add_argument("--revision", help="a Hub revision other than the pinned one")
    parser.add_argument("--cache-dir", type=Path, help="huggingface_hub cache folder")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=verify_command)


def list_command(args: argparse.Namespace) -> int:
    from ..manifest import get_entry, list_names

    entries = [get_entry(name) for name in list_names(args.pattern)]
    if args.json:
        print(json.dumps([entry.info for entry in entries], indent=2))
        return 0
    rows = [("NAME", "DIM", "ARCHITECTURE", "STATUS", "ALIASES")] + [
        (e.name, f"{e.dimension}D", e.architecture, e.status, ", ".join(e.aliases)) for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if not entries:
        print(f"(no model matches {args.pattern!r})")
    return 0


def info_command(args: argparse.Namespace) -> int:
    from ..api import model_info

    info = model_info(args.name)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    weights, spec = info["weights"], info["input"]
    lines = [
        f"{info['name']} ({info['status']})"
        + (f", aliases: {', '.join(info['aliases'])}" if info["aliases"] else ""),
        f"  {info.get('description', '')}",
        f"  network:    {info['architecture']} {json.dumps(info['arguments'])}"
        f" ({info['component']})",
        f"  input:      {spec['modality']}, {spec['channels']} channel(s), "
        f"{spec['intensity_units']} window {spec['intensity_window']}, patch {spec['patch_size']},"
        f" sizes divisible by {spec['divisible_by']}",
        f"              {spec['normalisation']}",
        f"  weights:    {_weights_source(weights)}",
        f"  sha256:     {weights['sha256'] or '-'} ({weights['size'] or '-'} bytes)",
        f"  licence:    {info['license']}",
        f"  paper:      {info['paper']['title']} ({info['paper']['venue']}), "
        f"arXiv:{info['paper']['arxiv']}",
    ]
    if info.get("note"):
        lines.append(f"  note:       {info['note']}")
    print("\n".join(lines))
    return 0


def _weights_source(weights: dict) -> str:
    hub = f"{weights['repo_id']}/{weights['filename']}" if weights["repo_id"] else None
    if weights.get("bundled"):
        later = f"; Hub repo {hub} once uploaded" if hub and not weights["revision"] else ""
        return f"bundled in the package ({weights['bundled']}), no download{later}"
    return f"{hub} @ {weights['revision'] or '(no revision: not uploaded)'}"


def download_command(args: argparse.Namespace) -> int:
    from ..atomic import atomic_output
    from ..errors import InvalidInputError
    from ..hub import fetch_zoo_weights
    from ..manifest import get_entry, read_manifest

    if args.all == bool(args.names):
        raise InvalidInputError("name the models to download, or pass --all (not both).")
    entries = list(read_manifest().values()) if args.all else map(get_entry, args.names)
    for entry in entries:
        if args.all and not entry.published:
            print(f"{entry.name}: skipped, not published yet (`pcrlv2-hub info {entry.name}`)")
            continue
        path = fetch_zoo_weights(entry, revision=args.revision, cache_dir=args.cache_dir)
        if args.to:
            with atomic_output(args.to / f"{entry.name}.safetensors") as tmp:
                shutil.copyfile(path, tmp)
            path = args.to / f"{entry.name}.safetensors"
        print(f"{entry.name}: {path} (sha256 verified)")
    return 0


def convert_command(args: argparse.Namespace) -> int:
    from ..convert import convert_official

    release = convert_official(args.checkpoint, args.out, name=args.name)
    print(
        f"wrote {release.weights_path} ({release.size_bytes} bytes, sha256 {release.sha256}),\n"
        f"      {release.card_path} and {release.snippet_path}.\n"
        f"load it with pcrlv2_hub.load(weights='{release.weights_path}')"
    )
    return 0


def verify_command(args: argparse.Namespace) -> int:
    from ..verify import verify

    report = verify(args.target, revision=args.revision, cache_dir=args.cache_dir)
    if args.json:
        print(json.dumps({**report.__dict__, "path": str(report.path)}, indent=2))
        return 0
    golden = (
        f"ok ({report.golden_values} values within tolerance)"
        if report.golden_values is not None
        else "not checked: no golden output recorded for this file"
    )
    digest = (
        f"ok ({report.tensor_digest})"
        if report.tensor_digest
        else "not checked: the file records no digest (re-export or convert it to add one)"
    )
    print(
        f"{report.path}\n"
        f"  sha256        {report.sha256} (reference: {report.expected_from})\n"
        f"  tensor digest {digest}\n"
        f"  strict load   ok ({report.tensors} tensors)\n"
        f"  golden output {golden}"
    )
    return 0
