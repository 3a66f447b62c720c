"""The volume cache: one decoded float16 ``.npy`` per source volume, or a note why there is none.

An entry's name holds a key of the source file (path, size, modification time) and of the
preprocessing, so a changed file or recipe gets a new entry and a rerun finds the old
ones. Beside an entry may lie a small JSON *record* of what decoding said: the reason a
volume cannot be used (then there is no ``.npy``: a rerun does not decode it again) or
notes about one that was used (a DICOM folder holding several series). A record is
written before its entry, so every process that sees an entry also sees its record.

Every file appears whole (written to a temporary and renamed), so a process killed while
decoding leaves only complete entries; its temporaries are named after the host and the
process and are removed by the next run on that host once that process is gone. Many
processes, on one node or on many sharing a file system, can fill one cache at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from .volumes import Preprocessing

CACHE_FORMAT = "2"  # 2: C order (1 kept the transposed SimpleITK layout)
CACHE_DTYPE = np.float16
_TEMPORARY_SUFFIX = ".tmp"


class CachedVolume:
    """A decoded volume in the cache, memory-mapped on first use.

    It pickles as its path, so DataLoader workers (fork or spawn) share the page cache
    instead of copying voxels. Supports ``shape`` and slicing like an array.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[key]

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_array": None}

    def __repr__(self) -> str:
        return f"CachedVolume({str(self.path)!r})"


@dataclass
class EntryRecord:
    """What decoding one source said: why it is unusable, or notes about it."""

    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def entry_path(cache: Path, source: Path, preprocessing: Preprocessing) -> Path:
    """Where the decoded ``source`` lives in ``cache`` (whether or not it is there yet)."""
    return cache / f"{_safe_stem(source)}-{_source_key(source, preprocessing)}.npy"


def read_record(entry: Path) -> EntryRecord | None:
    """The record beside ``entry``, or None when decoding has said nothing (yet)."""
    try:
        values = json.loads(_record_path(entry).read_text(encoding="utf-8"))
        return EntryRecord(skipped=values.get("skipped"), notes=list(values.get("notes", [])))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError, TypeError) as error:
        raise DataError(
            f"the volume cache record {_record_path(entry)} is unreadable ({error}); "
            f"delete it and run again to decode that volume anew."
        ) from error


def is_settled(entry: Path) -> bool:
    """Decoded, or known to be unusable: nothing left to do for this source."""
    if entry.exists():
        return True
    record = read_record(entry)
    return record is not None and record.skipped is not None


def write_entry(entry: Path, voxels: np.ndarray, notes: list[str]) -> None:
    """Store decoded voxels (and any notes first), each file atomically."""
    if notes:
        _write_record(entry, EntryRecord(notes=notes))
    with _temporary(entry) as temporary, open(temporary, "wb") as stream:
        np.save(stream, np.ascontiguousarray(voxels, dtype=CACHE_DTYPE))


def write_skip(entry: Path, reason: str) -> None:
    """Record that the source of ``entry`` cannot be used, so no one decodes it again."""
    _write_record(entry, EntryRecord(skipped=reason))


def remove_orphaned_temporaries(cache: Path) -> int:
    """Delete temporaries that processes of this host left when killed; how many."""
    host, removed = _host(), 0
    for temporary in cache.glob(f".*{_TEMPORARY_SUFFIX}"):
        parts = temporary.name.rsplit(".", 3)  # .NAME.HOST.PID.tmp
        if len(parts) == 4 and parts[1] == host and not _is_alive(parts[2]):
            temporary.unlink(missing_ok=True)
            removed += 1
    return removed


def default_cache_dir() -> Path:
    root = os.environ.get("PCRLV2_HUB_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pcrlv2_hub"
    return Path(root) / "volumes"


def _record_path(entry: Path) -> Path:
    return entry.with_suffix(".json")


def _write_record(entry: Path, record: EntryRecord) -> None:
    with _temporary(_record_path(entry)) as temporary:
        temporary.write_text(json.dumps(asdict(record)), encoding="utf-8")


@contextmanager
def _temporary(target: Path) -> Iterator[Path]:
    """A temporary beside ``target`` that replaces it on success and is removed otherwise."""
    path = target.parent / f".{target.name}.{_host()}.{os.getpid()}{_TEMPORARY_SUFFIX}"
    try:
        yield path
        os.replace(path, target)
    except OSError as error:
        raise DataError(
            f"cannot write the volume cache entry {target} ({error}); free some disk space "
            f"or choose another cache_dir (--cache-dir)."
        ) from error
    finally:
        path.unlink(missing_ok=True)


def _source_key(path: Path, preprocessing: Preprocessing) -> str:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    if path.name.lower().endswith(".mhd"):
        files += [path.with_suffix(s) for s in (".raw", ".zraw") if path.with_suffix(s).exists()]
    stamps = [(str(f.absolute()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    description = {"format": CACHE_FORMAT, "files": stamps, "preprocessing": asdict(preprocessing)}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]


def _safe_stem(path: Path) -> str:
    stem = path.name.split(".")[0] or "volume"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60]


def _host() -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname()) or "host"


def _is_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
