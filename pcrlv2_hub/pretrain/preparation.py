"""Decoding a whole archive into the volume cache: in parallel, shared by all ranks, restartable.

``pcrlv2-hub prepare`` and ``pretrain`` both call :func:`prepare_volumes`. Each process
decodes its *share* of the sources (every ``count``-th, from ``index``) in a pool of
worker processes, then waits, on the cache itself and not in a collective whose timeout
the work could exceed, until the other shares are there. Under torchrun the share is
this rank's among the ranks of its node (a node-local cache: each node decodes
everything once, split over its ranks) or, with a cache on a file system all nodes see
(``shared_cache``), among all ranks of the run.

A rerun decodes nothing that is already cached or known to be unusable; a run killed
midway leaves only complete entries, and the next one finishes the job
(``volume_cache.py``). Each volume is decoded in a fresh worker process, so what a
native reader does wrong on a damaged file stays there: memory it keeps (GDCM was seen
to hold on to gigabytes after some damaged DICOM slices, see ``benchmarks/fuzz``) is
returned when the process ends, and a crash costs that volume only (the pool is rebuilt
and the culprit found by decoding the rest one at a time).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..errors import DataError
from .sources import DataSource, DataSummary
from .volume_cache import (
    CachedVolume,
    default_cache_dir,
    entry_path,
    is_settled,
    read_record,
    remove_orphaned_temporaries,
    write_entry,
    write_skip,
)
from .volumes import Preprocessing, find_volumes, read_volume

if TYPE_CHECKING:
    from .config import PretrainConfig

DEFAULT_TIMEOUT_S = 24 * 3600.0
"""How long a process waits for the other processes' shares of the decoding by default."""
_POLL_S = 1.0
_ONE_TASK_PER_PROCESS = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
"""Python 3.10 cannot recycle pool processes: there, they decode several volumes each."""


@dataclass(frozen=True)
class Share:
    """The sources one process decodes: ``index``, ``index + count``, ``index + 2 count`` ..."""

    index: int = 0
    count: int = 1

    @classmethod
    def under_launcher(cls, shared_cache: bool = False) -> Share:
        """This process's share under torchrun (one share of everything without it)."""
        if shared_cache:
            return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
        return cls(int(os.environ.get("LOCAL_RANK", 0)), _local_processes())


@dataclass
class PreparedVolumes:
    """The usable volumes of a data source, what was skipped, and what this process did."""

    volumes: list[CachedVolume]
    paths: list[Path]
    summary: DataSummary
    decoded: int  # decoded by this process now; the others came from the cache or others
    seconds: float  # finding, decoding and waiting
    cache_bytes: int  # size of the usable entries

    def note_smaller_than(self, size: tuple[int, int, int], what: str) -> None:
        """Note each volume smaller than ``size`` voxels along some axis (it gets padded)."""
        for path, volume in zip(self.paths, self.volumes, strict=True):
            short = [
                axis for axis, (n, m) in enumerate(zip(volume.shape, size, strict=True)) if n < m
            ]
            if short:
                axes = ", ".join("xyz"[a] for a in short)
                self.summary.note(
                    path,
                    f"its {'x'.join(map(str, volume.shape))} voxels are smaller than {what} "
                    f"({'x'.join(map(str, size))}) along {axes}: those crops are zero-padded",
                )


def prepare_volumes(
    source: DataSource,
    preprocessing: Preprocessing | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    workers: int | None = None,
    share: Share = Share(),
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool = False,
) -> PreparedVolumes:
    """Find, decode (once, ``workers`` at a time) and memory-map every usable volume.

    An unusable volume is skipped with a DataWarning naming it and is counted in the
    summary; DataError when no volume is usable, or when the other processes' shares are
    not all in the cache after ``timeout_s``. ``workers`` defaults to this process's
    cores divided by the processes on its node. ``cache_dir`` defaults to
    ``$PCRLV2_HUB_CACHE/volumes`` (else ``~/.cache/pcrlv2_hub/volumes``).
    """
    started = time.monotonic()
    preprocessing = preprocessing or Preprocessing()
    cache = _open_cache(cache_dir)
    inside = cache.absolute()
    paths = [p for p in find_volumes(source) if inside not in p.absolute().parents]
    remove_orphaned_temporaries(cache)
    entries = [entry_path(cache, path, preprocessing) for path in paths]
    mine = [
        (paths[i], entries[i])
        for i in range(share.index, len(paths), share.count)
        if not is_settled(entries[i])
    ]
    decoded = _decode(mine, preprocessing, workers or _default_workers(), progress)
    _wait_for_the_others(entries, paths, started + timeout_s, progress)
    prepared = PreparedVolumes([], [], DataSummary(found=len(paths)), decoded, 0.0, 0)
    for path, entry in zip(paths, entries, strict=True):
        record = read_record(entry)
        if record is not None and record.skipped is not None:
            prepared.summary.skip(path, record.skipped)
            continue
        for note in record.notes if record is not None else []:
            prepared.summary.note(path, note)
        prepared.volumes.append(CachedVolume(entry))
        prepared.paths.append(path)
        prepared.cache_bytes += entry.stat().st_size
    if not prepared.volumes:
        raise DataError(
            f"none of the {len(paths)} volumes found in {source!s} could be read "
            f"({prepared.summary}). Check that they are complete CT/MRI files in a supported "
            f"format."
        )
    prepared.seconds = time.monotonic() - started
    return prepared


def prepare_configured_volumes(config: PretrainConfig, progress: bool) -> PreparedVolumes:
    """:func:`prepare_volumes` with the data, preprocessing and settings of ``config``."""
    return prepare_volumes(
        config.data,
        config.volume_preprocessing(),
        cache_dir=config.cache_dir,
        workers=config.prepare_workers,
        share=Share.under_launcher(config.shared_cache),
        timeout_s=config.prepare_timeout,
        progress=progress,
    )


def _default_workers() -> int:
    """The cores this process may use, divided among the processes of its node."""
    return max(1, len(os.sched_getaffinity(0)) // _local_processes())


def _local_processes() -> int:
    """How many processes torchrun started on this node (1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def _open_cache(cache_dir: str | os.PathLike | None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the volume cache {cache} ({error}); choose another "
            f"folder with cache_dir (--cache-dir)."
        ) from error
    return cache


def _decode(
    work: list[tuple[Path, Path]], preprocessing: Preprocessing, workers: int, progress: bool
) -> int:
    """Decode ``work`` (source, entry) into the cache; how many were decoded."""
    if not work:
        return 0
    with tqdm(total=len(work), desc="decoding volumes", unit="volume", disable=not progress) as bar:
        lost = _decode_in_pool(work, preprocessing, min(workers, len(work)), bar)
        for item in lost:  # a reader killed its process: one at a time finds which
            if _decode_in_pool([item], preprocessing, 1, bar):
                write_skip(item[1], "reading it crashed the decoding process")
                bar.update()
    return sum(entry.exists() for _, entry in work)


def _decode_in_pool(
    work: list[tuple[Path, Path]], preprocessing: Preprocessing, workers: int, bar: tqdm
) -> list[tuple[Path, Path]]:
    """Decode ``work``, each item in a fresh process; the items lost if a process died."""
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    lost = []
    with ProcessPoolExecutor(
        workers,
        multiprocessing.get_context("spawn"),
        initializer=_limit_threads,
        initargs=(threads,),
        **_ONE_TASK_PER_PROCESS,
    ) as pool:
        futures: dict[Future, tuple[Path, Path]] = {
            pool.submit(_decode_into_cache, source, entry, preprocessing): (source, entry)
            for source, entry in work
        }
        for future in as_completed(futures):
            try:
                future.result()
            except BrokenProcessPool:
                lost.append(futures[future])
                continue
            bar.update()
    return [item for item in lost if not is_settled(item[1])]


def _decode_into_cache(source: Path, entry: Path, preprocessing: Preprocessing) -> None:
    """Decode one source into its cache entry, or record why it cannot be used.

    What the readers warn about (a DICOM folder holding several series) is kept as notes
    in the cache, so that every process, and every later run, reports it.
    """
    if is_settled(entry):  # another process, or an earlier run, was faster
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            voxels = read_volume(source, preprocessing)
        except DataError as error:
            write_skip(entry, str(error))
            return
    write_entry(entry, voxels, [str(w.message) for w in caught])


def _wait_for_the_others(
    entries: list[Path], paths: list[Path], deadline: float, progress: bool
) -> None:
    """Wait until every entry is settled; DataError naming what is missing at ``deadline``."""
    pending = [entry for entry in entries if not is_settled(entry)]
    bar = tqdm(total=len(pending), desc="waiting for the other ranks", unit="volume",
               disable=not (progress and pending))  # fmt: skip
    with bar:
        while pending:
            if time.monotonic() > deadline:
                missing = [str(p) for p, e in zip(paths, entries, strict=True) if e in pending]
                raise DataError(
                    f"{len(missing)} volumes decoded by other processes are still not in the "
                    f"cache ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): a "
                    f"process may have died, or they need longer; raise --prepare-timeout, or "
                    f"fill the cache beforehand with pcrlv2-hub prepare."
                )
            time.sleep(_POLL_S)
            still = [entry for entry in pending if not is_settled(entry)]
            bar.update(len(pending) - len(still))
            pending = still


def _limit_threads(threads: int) -> None:
    """Pool initializer: share the cores among the workers instead of each taking all."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
