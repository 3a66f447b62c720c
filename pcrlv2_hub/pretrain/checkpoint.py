"""Training checkpoints that survive a crash at any moment and resume a run exactly.

A checkpoint is this package's own training state: a ``torch.save`` dict holding only
tensors and plain Python values (numbers, strings, lists, dicts, tuples, None). It is read
back with ``torch.load(weights_only=True)``, which refuses to unpickle anything else, so
a checkpoint file can never execute code, even one copied from elsewhere. Published
weights are never checkpoints: ``pcrlv2-hub export`` turns one into safetensors.

Each save writes a temporary file in the same folder, flushes it to the disk (fsync),
moves the current ``last.pt`` to ``previous.pt`` (unless it is damaged: then the good
``previous.pt`` stays) and renames the new file to ``last.pt``. At every instant one
complete checkpoint exists, and a failed or killed save leaves the previous ones untouched.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_output
from ..errors import CheckpointError, CheckpointWarning
from ..pickle_archive import archive_problem

LAST = "last.pt"
PREVIOUS = "previous.pt"


def save_checkpoint(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` as ``directory/last.pt``, keeping the one before as ``previous.pt``."""
    directory = Path(directory)
    last = directory / LAST
    try:
        with atomic_output(last) as tmp:
            with open(tmp, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            if last.exists() and archive_problem(last) is None:  # never keep a damaged one
                os.replace(last, directory / PREVIOUS)
        _fsync_directory(directory)
    except OSError as error:
        raise CheckpointError(
            f"could not write a checkpoint in {directory} ({error}); the previous checkpoint "
            f"there is intact. Free disk space or fix permissions, then run again with --resume."
        ) from error
    return last


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file, or the newest intact one of a run's folder, on the CPU.

    A file is intact if every member of its archive passes its CRC32 check and it
    unpickles; a damaged ``last.pt`` (truncated, a flipped byte) is reported with a
    warning and ``previous.pt`` is used instead.
    """
    path = Path(path)
    candidates = [path / LAST, path / PREVIOUS] if path.is_dir() else [path]
    problems = []
    for candidate in candidates:
        if problems and candidate.is_file():
            warnings.warn(
                f"{problems[-1]}; resuming from {candidate} instead.",
                CheckpointWarning,
                stacklevel=2,
            )
        if not candidate.is_file():
            problems.append(f"{candidate}: missing")
            continue
        problem = archive_problem(candidate)
        if problem:
            problems.append(f"{candidate}: damaged, {problem}")
            continue
        try:
            return torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as error:  # any unpickling failure means "not a checkpoint of ours"
            problems.append(f"{candidate}: {type(error).__name__}: {error}")
    raise CheckpointError(
        "no readable pcrlv2_hub training checkpoint ("
        + "; ".join(problems)
        + "). Point to a run's output folder or its last.pt, or start without --resume."
    )


def capture_rng_state() -> dict[str, Any]:
    """The global random states (Python, NumPy, torch CPU and CUDA), weights_only-safe.

    The loop's own draws (crops, corruptions, pyramid levels) come from generators seeded
    by (seed, step), so they replay without any saved state; these global states cover
    whatever else draws from the global generators.
    """
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` saved (CUDA states only where CUDA exists)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
        }
    )
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    """Delete temporary files that a killed save left behind (never a finished checkpoint)."""
    for stale in Path(directory).glob(f".{LAST}.*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable too (POSIX; a no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
