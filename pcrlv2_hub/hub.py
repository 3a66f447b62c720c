"""Getting a weights file onto this machine, verified, through huggingface_hub's cache.

Zoo names resolve through the manifest to a file bundled in the package (checked, no
network at all), else to a Hub repo pinned at a commit (so a cached file is returned with
no network call at all), then to mirror URLs. ``hf-hub:org/repo@rev``
names fetch ``model.safetensors`` from any Hub repo. Every file's sha256 is checked before
anything reads it; a file that fails is deleted from the cache, never left behind.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .atomic import atomic_output
from .errors import (
    ChecksumMismatchError,
    DownloadError,
    InvalidInputError,
    OfflineError,
    WeightsFormatError,
    WeightsNotPublishedError,
)
from .manifest import ModelEntry
from .weights_file import open_weights, sha256_file

HF_HUB_PREFIX = "hf-hub:"
HF_HUB_FILENAME = "model.safetensors"
MIRROR_FOLDER = ".pcrlv2_hub_mirrors"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIMEOUT_S = 30


def is_pinned(entry: ModelEntry, revision: str | None) -> bool:
    """Whether ``revision`` is the one the manifest's sha256 belongs to: another revision
    is checked against the Hub's own LFS sha256 instead."""
    return revision is None or revision == entry.weights.revision


def fetch_zoo_weights(
    entry: ModelEntry,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    check_cached: bool = True,
) -> Path:
    """The verified local file of a zoo entry: from the cache, the Hub, or a mirror.

    ``check_cached=False``: a file already in the Hub cache is not hashed again when the
    manifest records its tensor digest; the caller checks the tensors against it.
    """
    if not entry.published:
        raise WeightsNotPublishedError(f"{entry.name}: {entry.info['note']}")
    source = entry.weights
    pinned = is_pinned(entry, revision)
    if source.bundled_path is not None and pinned:
        return bundled_weights(entry)
    failures: list[DownloadError] = []
    if source.repo_id:
        try:
            return fetch_hub_file(
                source.repo_id,
                source.filename,
                revision=revision or source.revision,
                cache_dir=cache_dir,
                sha256=source.sha256 if pinned else None,
                check_cached=check_cached or not (pinned and source.tensor_digest),
            )
        except DownloadError as error:
            if not (source.mirrors and pinned):
                raise
            failures.append(error)
    for url in source.mirrors if pinned else ():
        try:
            return fetch_mirror_file(url, source.sha256, cache_dir=cache_dir)
        except DownloadError as error:
            failures.append(error)
    offline = bool(failures) and all(isinstance(f, OfflineError) for f in failures)
    raise (OfflineError if offline else DownloadError)(
        f"{entry.name}: no source could deliver the weights:\n"
        + "\n".join(f"  - {failure}" for failure in failures)
    )


def bundled_weights(entry: ModelEntry) -> Path:
    """The file shipped inside the package, after checking its sha256 against the manifest."""
    path = entry.weights.bundled_path
    if path is None or not path.is_file():
        raise DownloadError(
            f"{entry.name}: its weights should be inside the installed package at {path}, "
            "but the file is missing; reinstall pcrlv2_hub (pip install --force-reinstall)."
        )
    actual = sha256_file(path)
    if actual != entry.weights.sha256:
        raise ChecksumMismatchError(
            f"{entry.name}: the bundled file {path} has sha256 {actual}, not the manifest's "
            f"{entry.weights.sha256}: it was modified after installation. Reinstall "
            "pcrlv2_hub (pip install --force-reinstall) to restore it."
        )
    return path


def parse_hf_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:org/repo@revision`` -> (``org/repo``, ``revision`` or None)."""
    repo_id, _, revision = name.removeprefix(HF_HUB_PREFIX).partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InvalidInputError(
            f"{name!r} is not a Hub name; write hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION."
        )
    return repo_id, revision or None


def fetch_hf_hub_weights(
    name: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """``model.safetensors`` of an ``hf-hub:`` name, checked against the Hub's LFS sha256."""
    repo_id, named_revision = parse_hf_hub_name(name)
    return fetch_hub_file(
        repo_id, HF_HUB_FILENAME, revision=revision or named_revision, cache_dir=cache_dir
    )


def fetch_hub_file(
    repo_id: str,
    filename: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    check_cached: bool = True,
) -> Path:
    """``hf_hub_download`` with package errors, then a sha256 check of the cached blob.

    Without ``sha256`` the blob's own name is the reference: the Hub names an LFS file's
    blob by its sha256 (its ETag). ``check_cached=False``: a file already cached for this
    revision is returned unhashed, because the caller checks its tensors against a digest
    from the manifest instead (see :func:`~pcrlv2_hub.weights_file.open_weights`).
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}/{filename}@{revision or 'main'}"
    if not check_cached and revision is not None:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    try:
        path = Path(
            hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, library_name="pcrlv2_hub"
            )
        )
    except RevisionNotFoundError as error:
        raise DownloadError(
            f"{where}: the revision {revision!r} does not exist in {repo_id}; check the commit, "
            "branch or tag (the manifest pins a commit hash)."
        ) from error
    except RepositoryNotFoundError as error:
        raise DownloadError(
            f"{where}: the repository {repo_id} does not exist or is private; check the name, "
            "or log in with `hf auth login` if you should have access."
        ) from error
    except LocalEntryNotFoundError as error:
        if constants.HF_HUB_OFFLINE:
            raise OfflineError(
                f"{where} is not in the cache ({cache_dir or constants.HF_HUB_CACHE}) and "
                "HF_HUB_OFFLINE is set. Download it once where there is network "
                "(`pcrlv2-hub download NAME`) and copy the cache folder here, or unset "
                "HF_HUB_OFFLINE."
            ) from error
        raise DownloadError(
            f"{where}: the Hub could not be reached and the file is not cached. Check the "
            "network, proxy and HF_ENDPOINT, or use a machine that has the file cached."
        ) from error
    except EntryNotFoundError as error:
        raise DownloadError(
            f"{where}: {repo_id} has no file {filename!r} at this revision; check the file "
            "name and the revision."
        ) from error
    except Exception as error:  # truncated transfers, server and transport failures
        raise DownloadError(
            f"{where}: download failed ({type(error).__name__}: {_first_line(error)}). Nothing "
            "partial was kept in the cache; try again, or check the file name."
        ) from error
    blob = path.resolve()
    expected = sha256 or (blob.name if _SHA256.fullmatch(blob.name) else None)
    if expected is not None:
        actual = sha256_file(blob)
        if actual != expected:
            _discard(path)
            raise ChecksumMismatchError(
                f"{where}: sha256 {actual} differs from the expected {expected}. The bad file "
                "was deleted from the cache; download again, and if it persists the file on "
                "the server is not the one the manifest describes."
            )
    return path


def fetch_mirror_file(url: str, sha256: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """A mirror URL through requests into a content-addressed cache (named by sha256)."""
    import requests
    from huggingface_hub import constants
    from tqdm.auto import tqdm

    target = Path(cache_dir or constants.HF_HUB_CACHE) / MIRROR_FOLDER / sha256
    if target.is_file():
        if sha256_file(target) == sha256:
            return target
        target.unlink()
    if constants.HF_HUB_OFFLINE:
        raise OfflineError(f"{url} is not cached and HF_HUB_OFFLINE is set.")
    digest = hashlib.sha256()
    try:
        with (
            requests.get(url, stream=True, timeout=_TIMEOUT_S) as response,
            atomic_output(target) as tmp,
            open(tmp, "wb") as handle,
        ):
            response.raise_for_status()
            total = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            handle.close()
            if digest.hexdigest() != sha256:
                raise ChecksumMismatchError(
                    f"{url}: sha256 {digest.hexdigest()} differs from the expected {sha256}; "
                    "nothing was kept. The mirror serves another file: use another source."
                )
    except requests.RequestException as error:
        raise DownloadError(f"{url}: download failed ({_first_line(error)}).") from error
    return target


def open_zoo_weights(
    entry: ModelEntry,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
    """A zoo entry's tensors, and the call that waits for their check against the manifest
    (run while the caller builds the network). A cached file that fails, damaged after
    its download, is deleted, so that the next load downloads it again."""
    path = fetch_zoo_weights(entry, revision=revision, cache_dir=cache_dir, check_cached=False)
    pinned = is_pinned(entry, revision)  # then the manifest is the reference
    digest = entry.weights.tensor_digest if pinned else None
    bundled = path == entry.weights.bundled_path
    with _discarded_if_damaged(path, keep=bundled):
        opened = open_weights(
            path,
            device,
            expected_digest=digest,
            sha256_checked=pinned and digest is None,  # fetch compared the file's sha256
        )

    def verify() -> None:
        with _discarded_if_damaged(path, keep=bundled):
            opened.verify()

    return opened.tensors, verify


@contextmanager
def _discarded_if_damaged(path: Path, *, keep: bool) -> Iterator[None]:
    try:
        yield
    except (ChecksumMismatchError, WeightsFormatError) as error:
        if keep:
            raise
        _discard(path)
        raise type(error)(
            f"{error} The damaged file was deleted from the cache: load again to download it."
        ) from None


def _discard(path: Path) -> None:
    """Delete a cached file: the blob a snapshot link points to, then the link."""
    path.resolve().unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
