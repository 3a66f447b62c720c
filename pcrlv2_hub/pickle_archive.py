"""The CRC32 check of a ``torch.save`` zip archive, made before anything is unpickled from it.

``torch.load`` reads the members of a zip checkpoint without comparing their CRC32s, so a
flipped byte inside a tensor loads as a different weight. Python's ``zipfile`` compares
every member's CRC32 as it reads it: one pass over the file, before unpickling, turns
silent corruption into a refusal. Pickles in the legacy (pre-zip) format carry no
checksum and cannot be checked this way.
"""

from __future__ import annotations

import os
import zipfile


def archive_problem(path: str | os.PathLike, *, legacy_allowed: bool = False) -> str | None:
    """Why the zip archive at ``path`` is damaged, or None if every member's CRC32 matches.

    A file that is not a zip archive (a truncated one has lost its central directory) is
    damaged, unless ``legacy_allowed``: then it may be a legacy pickle, left unchecked.
    """
    if not zipfile.is_zipfile(path):
        return None if legacy_allowed else "it is not a complete zip archive (truncated?)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as error:  # a damaged archive can fail in any of zipfile's layers
        return f"its zip structure is damaged ({type(error).__name__}: {error})"
    return f"its member {bad} fails its CRC32 check" if bad else None
