"""The model zoo: ``weights_manifest.json`` read, checked against its schema, and looked up.

Each entry says which network to build (architecture + arguments), what input it expects,
where its weights live (a Hugging Face Hub repo pinned to a commit, optional mirrors) and
which sha256 they must have. ``PCRLV2_HUB_MANIFEST`` points to another manifest (a private
zoo, or a test's).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ManifestError, UnknownModelError
from .tensor_digest import PREFIX as TREE_PREFIX
from .tensor_digest import scheme_of

MANIFEST_ENV = "PCRLV2_HUB_MANIFEST"
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "weights_manifest.json"
SCHEMA_VERSION = 1
STATUSES = ("published", "unpublished")
COMPONENTS = ("full", "encoder")

_OPTIONAL = type(None)
_ENTRY_FIELDS: dict[str, Any] = {
    "name": str,
    "aliases": list,
    "status": str,
    "dimension": int,
    "architecture": str,
    "arguments": dict,
    "component": str,
    "input": dict,
    "weights": dict,
    "license": str,
    "pretraining_data": (str, dict),
    "recipe": (str, dict),
    "paper": dict,
    "golden": (dict, _OPTIONAL),
}
_INPUT_FIELDS: dict[str, Any] = {
    "modality": str,
    "channels": int,
    "intensity_units": str,
    "intensity_window": list,
    "normalisation": str,
    "patch_size": list,
    "divisible_by": int,
}
_WEIGHTS_FIELDS: dict[str, Any] = {
    "repo_id": (str, _OPTIONAL),
    "filename": str,
    "revision": (str, _OPTIONAL),
    "mirrors": list,
    "sha256": (str, _OPTIONAL),
    "size": (int, _OPTIONAL),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class WeightsSource:
    """Where a zoo entry's file comes from and what it must hash to.

    ``bundled`` is a path relative to the package folder for weights shipped inside the
    wheel: they load with no network at all, and the Hub repo is where they go once
    uploaded.
    """

    repo_id: str | None
    filename: str
    revision: str | None
    mirrors: tuple[str, ...]
    sha256: str | None
    size: int | None
    bundled: str | None = None
    tensor_digest: str | None = None
    """The digest the file records of its tensors: with it, a cached file is checked by
    hashing its tensors in threads while the network is built, instead of one sha256
    stream over the whole file (which is still checked after every download)."""

    @property
    def bundled_path(self) -> Path | None:
        return PACKAGE_DIR / self.bundled if self.bundled else None


@dataclass(frozen=True)
class ModelEntry:
    """One zoo model; ``info`` is the entry exactly as the manifest states it."""

    name: str
    aliases: tuple[str, ...]
    status: str
    dimension: int
    architecture: str
    arguments: dict[str, Any]
    component: str
    weights: WeightsSource
    golden: dict[str, Any] | None
    info: dict[str, Any]

    @property
    def published(self) -> bool:
        return self.status == "published"


def manifest_path() -> Path:
    """``$PCRLV2_HUB_MANIFEST``, else the copy inside the wheel, else the repository's."""
    override = os.environ.get(MANIFEST_ENV)
    if override:
        return Path(override).expanduser()
    packaged = Path(__file__).with_name(MANIFEST_NAME)
    return packaged if packaged.is_file() else Path(__file__).resolve().parents[1] / MANIFEST_NAME


def read_manifest(path: str | os.PathLike | None = None) -> dict[str, ModelEntry]:
    """Every entry by name, validated; re-read only when the file changes."""
    path = Path(path) if path is not None else manifest_path()
    try:
        stat = path.stat()
    except OSError as error:
        raise ManifestError(
            f"cannot read the weights manifest {path} ({error.strerror}); "
            f"check ${MANIFEST_ENV} or reinstall pcrlv2_hub."
        ) from error
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size)


def get_entry(name: str) -> ModelEntry:
    """The entry called ``name`` or one of its aliases; unknown names get suggestions."""
    entries = read_manifest()
    lookup = {key: entry for entry in entries.values() for key in (entry.name, *entry.aliases)}
    if name in lookup:
        return lookup[name]
    close = difflib.get_close_matches(name, list(lookup), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Known models: {', '.join(sorted(entries))} "
        "(`pcrlv2-hub list` describes them; `hf-hub:org/repo@revision` loads from any Hub repo)."
    )


def list_names(pattern: str = "*") -> list[str]:
    """Zoo names matching a shell-style pattern (aliases match too)."""
    return sorted(
        entry.name
        for entry in read_manifest().values()
        if any(fnmatch.fnmatchcase(key, pattern) for key in (entry.name, *entry.aliases))
    )


def validate_entry(entry: dict[str, Any]) -> None:
    """Raise :class:`ManifestError` unless ``entry`` follows the manifest schema."""
    where = f"manifest entry {entry.get('name', '?')!r}"
    _check_fields(entry, _ENTRY_FIELDS, where)
    _check_fields(entry["input"], _INPUT_FIELDS, f"{where}, input")
    _check_fields(entry["weights"], _WEIGHTS_FIELDS, f"{where}, weights")
    weights = entry["weights"]
    if entry["status"] not in STATUSES:
        raise ManifestError(f"{where}: status must be one of {STATUSES}.")
    if entry["component"] not in COMPONENTS:
        raise ManifestError(f"{where}: component must be one of {COMPONENTS}.")
    if entry["dimension"] not in (2, 3):
        raise ManifestError(f"{where}: dimension must be 2 or 3.")
    if weights["sha256"] is not None and not _SHA256.fullmatch(weights["sha256"]):
        raise ManifestError(f"{where}: weights.sha256 must be 64 lower-case hex digits.")
    digest = weights.get("tensor_digest")
    if digest is not None and not (isinstance(digest, str) and scheme_of(digest)):
        raise ManifestError(
            f"{where}: weights.tensor_digest must be a digest such as "
            f"'{TREE_PREFIX}<hex>', as `pcrlv2-hub verify` prints it."
        )
    bundled = weights.get("bundled")
    if bundled is not None and (
        not isinstance(bundled, str) or Path(bundled).is_absolute() or ".." in Path(bundled).parts
    ):
        raise ManifestError(f"{where}: weights.bundled must be a path inside the package.")
    if entry["status"] == "published":
        pinned = (
            weights["repo_id"] and weights["revision"] and _COMMIT.fullmatch(weights["revision"])
        )
        if weights["sha256"] is None or weights["size"] is None or entry["golden"] is None:
            raise ManifestError(f"{where}: a published entry needs sha256, size and golden.")
        if not (pinned or weights["mirrors"] or bundled):
            raise ManifestError(
                f"{where}: a published entry needs weights.repo_id with a 40-hex commit "
                "revision, mirror URLs, or a bundled file."
            )
    elif not entry.get("note"):
        raise ManifestError(
            f"{where}: an unpublished entry needs a note saying why and what to do."
        )


def _check_fields(mapping: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    for key, types in fields.items():
        if key not in mapping:
            raise ManifestError(f"{where}: the field {key!r} is missing.")
        if not isinstance(mapping[key], types) or isinstance(mapping[key], bool):
            raise ManifestError(f"{where}: {key!r} has the wrong type ({mapping[key]!r}).")


@lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> dict[str, ModelEntry]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path} is not a readable JSON manifest ({error}).") from error
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        raise ManifestError(f"{path}: expected an object with schema_version {SCHEMA_VERSION}.")
    if not isinstance(document.get("models"), list):
        raise ManifestError(f"{path}: 'models' must be a list of entries.")
    entries: dict[str, ModelEntry] = {}
    seen: set[str] = set()
    for raw in document["models"]:
        if not isinstance(raw, dict):
            raise ManifestError(f"{path}: every model entry must be an object.")
        validate_entry(raw)
        names = (raw["name"], *raw["aliases"])
        if seen.intersection(names):
            raise ManifestError(f"{path}: {sorted(seen.intersection(names))} named twice.")
        seen.update(names)
        weights = raw["weights"]
        entries[raw["name"]] = ModelEntry(
            name=raw["name"],
            aliases=tuple(raw["aliases"]),
            status=raw["status"],
            dimension=raw["dimension"],
            architecture=raw["architecture"],
            arguments=raw["arguments"],
            component=raw["component"],
            weights=WeightsSource(
                weights["repo_id"],
                weights["filename"],
                weights["revision"],
                tuple(weights["mirrors"]),
                weights["sha256"],
                weights["size"],
                weights.get("bundled"),
                weights.get("tensor_digest"),
            ),
            golden=raw["golden"],
            info=raw,
        )
    return entries
