"""``pcrlv2-hub verify``: is this weights file the one it claims to be, and does it work?

Four checks, each stronger than the last: the sha256 (the bytes, against a manifest), the
tensor digest the file records about itself, a strict load (the tensors fit the network
they describe), and the golden output (this package, here, computes what the publisher's
computed on the same fixed input).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import golden
from .errors import ChecksumMismatchError, UnverifiedWeightsWarning, VerificationError
from .hub import fetch_zoo_weights
from .loading import build_loaded
from .manifest import get_entry, read_manifest
from .models.registry import build_model
from .publish import SNIPPET_NAME
from .weights_file import read_weights, sha256_file


@dataclass(frozen=True)
class VerifyReport:
    """What was checked; ``golden_values`` is None when no golden output was known."""

    path: Path
    sha256: str
    expected_from: str
    tensor_digest: str | None
    """The digest the tensors were checked against; None if the file records none."""
    tensors: int
    golden_values: int | None


def verify(
    target: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> VerifyReport:
    """Verify a zoo model (by name) or a local safetensors file.

    A file's reference is the ``manifest_entry.json`` beside it (a release folder), else
    the zoo entry with the same sha256; with neither, only the strict load is checked.
    """
    path = Path(target)
    if path.is_file():
        sha256 = sha256_file(path)
        expected, reference = _reference_for(path, sha256)
        if expected is not None and expected["weights"]["sha256"] != sha256:
            raise ChecksumMismatchError(
                f"{path}: sha256 {sha256} differs from {expected['weights']['sha256']} in "
                f"{reference}; the file was changed or damaged after it was written."
            )
    else:
        entry = get_entry(str(target))
        path = fetch_zoo_weights(entry, revision=revision, cache_dir=cache_dir)
        sha256, expected, reference = entry.weights.sha256 or "", entry.info, "the manifest"
    with warnings.catch_warnings():  # the report says whether there was a digest
        warnings.simplefilter("ignore", UnverifiedWeightsWarning)
        state_dict, metadata = read_weights(path)
    model = build_loaded(
        partial(build_model, metadata.architecture, **metadata.arguments),
        state_dict,
        description=f"{metadata.architecture} as its metadata describes it",
    )
    recorded = expected.get("golden") if expected else None
    if recorded:
        problems = golden.compare(model, recorded)
        if problems:
            raise VerificationError(
                f"{path} loads, but its output on the golden input differs from the one "
                f"recorded in {reference}:\n  " + "\n  ".join(problems)
            )
    return VerifyReport(
        path=path,
        sha256=sha256,
        expected_from=reference,
        tensor_digest=metadata.tensor_digest,
        tensors=len(state_dict),
        golden_values=2 * len(recorded["summary"]) if recorded else None,
    )


def _reference_for(path: Path, sha256: str) -> tuple[dict[str, Any] | None, str]:
    snippet = path.with_name(SNIPPET_NAME)
    if snippet.is_file():
        return json.loads(snippet.read_text(encoding="utf-8")), str(snippet)
    for entry in read_manifest().values():
        if entry.weights.sha256 == sha256:
            return entry.info, f"the manifest entry {entry.name}"
    return None, "nothing (no manifest entry has this sha256)"
