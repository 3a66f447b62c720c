"""Downloads through huggingface_hub from the loopback Hub: verified, cached, offline-safe."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO_ID, Published, flip_tensor_byte
from hub_server import LoopbackHub

import pcrlv2_hub
from pcrlv2_hub import (
    ChecksumMismatchError,
    DownloadError,
    InvalidInputError,
    WeightsFormatError,
)


def hf_cache(tmp_path: Path) -> Path:
    return tmp_path / "hf_home" / "hub"


def cached_files(root: Path) -> list[Path]:
    """Files or links that could hold weights: blobs, snapshot links, mirror files, temp files.

    Bookkeeping (locks, refs, ``.no_exist`` markers, ``CACHEDIR.TAG``) is left out.
    """
    bookkeeping = {".locks", "refs", ".no_exist"}
    return sorted(
        p
        for p in root.rglob("*")
        if not p.is_dir() and p.name != "CACHEDIR.TAG" and not bookkeeping & set(p.parts)
    )


def assert_same_network(loaded: torch.nn.Module, source: torch.nn.Module) -> None:
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected, actual = source(x), loaded(x)
    assert torch.equal(actual.restoration, expected.restoration)
    for got, want in zip(actual.levels, expected.levels, strict=True):
        assert torch.equal(got.projection, want.projection)
        assert torch.equal(got.restoration, want.restoration)


def test_download_and_load_give_the_source_network(published: Published, hub: LoopbackHub):
    model = pcrlv2_hub.load("tiny3d")
    assert not model.training
    assert_same_network(model, published.model)
    assert [method for method, _ in hub.file_requests("model.safetensors")] == ["HEAD", "GET"]


def test_second_load_makes_no_request(published: Published, hub: LoopbackHub):
    pcrlv2_hub.load("tiny")
    hub.requests.clear()
    model = pcrlv2_hub.load("tiny3d")
    assert hub.requests == []
    assert_same_network(model, published.model)


def test_offline_mode_uses_the_cache_and_fails_clearly_without_it(
    published: Published, hub: LoopbackHub, tmp_path: Path
):
    pcrlv2_hub.load("tiny3d")  # fills HF_HOME
    hub.requests.clear()
    script = textwrap.dedent(
        f"""
        import torch, pcrlv2_hub
        model = pcrlv2_hub.load("tiny3d")
        torch.save(model.state_dict(), {str(tmp_path / "offline.pt")!r})
        try:
            pcrlv2_hub.load("tiny3d", cache_dir={str(tmp_path / "empty_cache")!r})
        except pcrlv2_hub.OfflineError as error:
            print("OfflineError:", error)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "OfflineError:" in result.stdout and "HF_HUB_OFFLINE" in result.stdout
    assert hub.requests == []
    offline = torch.load(tmp_path / "offline.pt")
    assert all(torch.equal(offline[k], v) for k, v in published.model.state_dict().items())


def test_checksum_mismatch_leaves_no_bad_file(
    published: Published, hub: LoopbackHub, tmp_path: Path
):
    hub.faults["model.safetensors"] = "tamper"
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        pcrlv2_hub.load("tiny3d")
    assert cached_files(hf_cache(tmp_path)) == []
    del hub.faults["model.safetensors"]
    assert_same_network(pcrlv2_hub.load("tiny3d"), published.model)


def test_a_cached_file_damaged_later_is_refused_then_downloaded_again(
    published: Published, hub: LoopbackHub, tmp_path: Path
):
    """A warm load checks the tensors against the manifest's digest (not the file's
    sha256): a byte flipped on disk after the download is still caught."""
    pcrlv2_hub.load("tiny3d")
    (snapshot,) = (hf_cache(tmp_path) / "models--pcrlv2-test--unet3d_tiny").glob("snapshots/*/*")
    largest = max(published.model.state_dict().items(), key=lambda item: item[1].numel())[0]
    flip_tensor_byte(snapshot.resolve(), largest)
    hub.requests.clear()
    with pytest.raises(ChecksumMismatchError, match=r"do not match the digest.*deleted from"):
        pcrlv2_hub.load("tiny3d")
    assert hub.requests == []  # the damaged file was found with no network call
    assert cached_files(hf_cache(tmp_path)) == []
    assert_same_network(pcrlv2_hub.load("tiny3d"), published.model)
    assert [method for method, _ in hub.file_requests("model.safetensors")] == ["HEAD", "GET"]


def test_the_file_must_record_the_manifest_tensor_digest(published: Published, tmp_path: Path):
    digest = published.entry["weights"]["tensor_digest"]
    assert digest.startswith("blake3:")
    published.entry["weights"]["tensor_digest"] = digest[:-4] + "0000"
    published.write_manifest()
    with pytest.raises(ChecksumMismatchError, match="records the tensor digest"):
        pcrlv2_hub.load("tiny3d")
    assert cached_files(hf_cache(tmp_path)) == []


def test_truncated_transfer_leaves_nothing_partial(
    published: Published, hub: LoopbackHub, tmp_path: Path
):
    hub.faults["model.safetensors"] = "truncate"
    with pytest.raises(DownloadError, match="Nothing partial"):
        pcrlv2_hub.load("tiny3d")
    assert cached_files(hf_cache(tmp_path)) == []


def test_missing_file_is_a_clear_404(published: Published, tmp_path: Path):
    published.entry["weights"]["filename"] = "missing.safetensors"
    published.write_manifest()
    with pytest.raises(DownloadError, match=r"no file 'missing\.safetensors'"):
        pcrlv2_hub.load("tiny3d")
    assert cached_files(hf_cache(tmp_path)) == []


def test_missing_revision_and_repo(published: Published):
    with pytest.raises(DownloadError, match="revision 'v9' does not exist"):
        pcrlv2_hub.load("tiny3d", revision="v9")
    published.entry["weights"]["repo_id"] = "pcrlv2-test/absent"
    published.write_manifest()
    with pytest.raises(DownloadError, match="does not exist or is private"):
        pcrlv2_hub.load("tiny3d")


def test_unreachable_hub_without_cache(published: Published, hub: LoopbackHub):
    hub.portal = True  # a captive portal answers instead of the Hub
    with pytest.raises(DownloadError, match="could not be reached and the file is not cached"):
        pcrlv2_hub.load("tiny3d")
    hub.portal = False
    pcrlv2_hub.load("tiny3d")
    hub.portal = True  # once cached, a pinned revision needs no network at all
    assert_same_network(pcrlv2_hub.load("tiny3d"), published.model)


def test_wrong_file_type_is_refused(published: Published, hub: LoopbackHub, tmp_path: Path):
    pickle_path = tmp_path / "weights.pt"
    torch.save(published.model.state_dict(), pickle_path)
    data = pickle_path.read_bytes()
    commit = hub.publish(REPO_ID, {"model.safetensors": data}, branch="pickle")
    with pytest.raises(WeightsFormatError, match="not a readable safetensors"):
        pcrlv2_hub.load(f"hf-hub:{REPO_ID}@{commit}")
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(data)
    with pytest.raises(WeightsFormatError, match="not a readable safetensors"):
        pcrlv2_hub.load(weights=disguised)
    page = tmp_path / "login.pt"
    page.write_text("<html>Please sign in</html>")
    with pytest.raises(WeightsFormatError, match="not a readable PyTorch checkpoint"):
        pcrlv2_hub.load(weights=page)


def test_hf_hub_names(published: Published, hub: LoopbackHub):
    pinned = pcrlv2_hub.load(f"hf-hub:{REPO_ID}@{published.commit}")
    assert_same_network(pinned, published.model)
    hub.requests.clear()
    pcrlv2_hub.load(f"hf-hub:{REPO_ID}@{published.commit}")
    assert hub.requests == []
    assert_same_network(pcrlv2_hub.load(f"hf-hub:{REPO_ID}"), published.model)
    hub.faults["model.safetensors"] = "tamper"
    hub.publish(REPO_ID, {"model.safetensors": b"x" + published.release.weights_path.read_bytes()})
    with pytest.raises(ChecksumMismatchError):
        pcrlv2_hub.load(f"hf-hub:{REPO_ID}")
    with pytest.raises(InvalidInputError, match="hf-hub:ORG/REPO"):
        pcrlv2_hub.load("hf-hub:no-slash")


def test_mirror_url_when_the_hub_repo_is_gone(
    published: Published, hub: LoopbackHub, tmp_path: Path
):
    published.entry["weights"].update(
        repo_id="pcrlv2-test/absent",
        mirrors=[f"{hub.url}/{REPO_ID}/resolve/{published.commit}/model.safetensors"],
    )
    published.write_manifest()
    assert_same_network(pcrlv2_hub.load("tiny3d"), published.model)
    hub.requests.clear()
    pcrlv2_hub.load("tiny3d", cache_dir=hf_cache(tmp_path))
    assert [method for method, _ in hub.requests] == ["HEAD"]  # the Hub is still asked first


def test_tampered_mirror_leaves_no_file(published: Published, hub: LoopbackHub, tmp_path: Path):
    published.entry["weights"].update(
        repo_id=None, mirrors=[f"{hub.url}/{REPO_ID}/resolve/{published.commit}/model.safetensors"]
    )
    published.write_manifest()
    hub.faults["model.safetensors"] = "tamper"
    with pytest.raises(ChecksumMismatchError):
        pcrlv2_hub.load("tiny3d")
    assert cached_files(hf_cache(tmp_path)) == []
