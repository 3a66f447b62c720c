"""Turning a user's ``--data`` (a folder, a glob, or a text file of paths) into data files.

Volumes and 2D images are found the same way; only what counts as a data file differs.
What could not be used is reported, never silently dropped: each skipped file gets a
:class:`~pcrlv2_hub.errors.DataWarning` naming it, and a :class:`DataSummary` counts them.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, DataWarning

DataSource = str | os.PathLike | Sequence[str | os.PathLike]
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass
class DataSummary:
    """How many data files were found, and which were skipped and why."""

    found: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # used, but with a caveat

    @property
    def used(self) -> int:
        return self.found - len(self.skipped)

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        """Record ``path`` as unusable and warn, naming the file and the reason."""
        self.skipped.append((str(path), reason))
        warnings.warn(f"skipping {path}: {reason}", DataWarning, stacklevel=3)

    def note(self, path: str | os.PathLike, text: str) -> None:
        """Record a caveat about a file that is used (a padded or multi-series volume), and warn."""
        self.notes.append((str(path), text))
        warnings.warn(f"{path}: {text}", DataWarning, stacklevel=3)

    def __str__(self) -> str:
        text = f"{self.used} of {self.found} data files usable"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: " + ", ".join(p for p, _ in self.skipped)
        return text


def expand_source(
    source: DataSource, is_data_file: Callable[[Path], bool], what: str
) -> list[Path]:
    """Data files named by ``source``, sorted and without duplicates.

    ``source`` is a folder (searched recursively), a glob (``data/**/*.nii.gz``), a text
    file listing one path per line (relative paths are relative to the list; ``#``
    starts a comment), a single data file, or a sequence of any of these. A folder that
    ``is_data_file`` accepts (a DICOM series) is one item. Raises DataError when a named
    path does not exist or nothing is found, saying what is expected (``what``).
    """
    paths: list[Path] = []
    for item in [source] if isinstance(source, str | os.PathLike) else list(source):
        paths.extend(_expand_one(Path(item), is_data_file))
    unique = sorted(set(paths))
    if not unique:
        raise DataError(
            f"no {what} found in {source!s}. Pass a folder holding them (searched "
            f"recursively), a glob such as 'data/**/*.nii.gz' (quoted), or a text file "
            f"listing one path per line."
        )
    return unique


def _expand_one(path: Path, is_data_file: Callable[[Path], bool]) -> list[Path]:
    if path.is_dir():
        return _walk(path, is_data_file)
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            return _read_list(path, is_data_file)
        return [path.absolute()]
    if _GLOB_CHARACTERS & set(str(path)):
        matches = sorted(glob.glob(str(path), recursive=True))
        return [f for match in matches for f in _expand_one(Path(match), is_data_file)]
    raise DataError(f"{path} does not exist: check the path given as training data.")


def _walk(folder: Path, is_data_file: Callable[[Path], bool]) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root).absolute()
        if is_data_file(here):  # a series folder is one item: do not look inside
            found.append(here)
            dirs.clear()
            continue
        dirs.sort()
        found.extend(here / name for name in sorted(files) if is_data_file(here / name))
    return found


def _read_list(list_file: Path, is_data_file: Callable[[Path], bool]) -> list[Path]:
    entries = []
    for line in list_file.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            path = Path(entry).expanduser()
            entries.extend(
                _expand_one(path if path.is_absolute() else list_file.parent / path, is_data_file)
            )
    return entries
