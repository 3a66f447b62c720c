"""``prepare``: parallel decoding into the cache on real CT, reruns, kills, notes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series

from pcrlv2_hub.errors import DataError, DataWarning
from pcrlv2_hub.pretrain.preparation import Share, prepare_volumes
from pcrlv2_hub.pretrain.volumes import Preprocessing

SAMPLES = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data"
COARSE = Preprocessing(spacing=(2.0, 2.0, 2.0))  # the same code path, a quicker decode


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Six real CTs under distinct names (each is its own cache entry)."""
    folder = tmp_path_factory.mktemp("archive")
    for n in range(3):
        for sample in ("chest_ct", "abdomen_ct"):
            shutil.copy2(SAMPLES / f"{sample}.nii.gz", folder / f"{sample}_{n}.nii.gz")
    return folder


def _contents(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(cache.iterdir())}


def test_two_workers_fill_the_same_cache_as_one_and_a_rerun_decodes_nothing(archive, tmp_path):
    one = prepare_volumes(archive, COARSE, tmp_path / "one", workers=1)
    two = prepare_volumes(archive, COARSE, tmp_path / "two", workers=2)
    assert one.decoded == two.decoded == 6
    assert one.summary.used == two.summary.used == 6
    assert _contents(tmp_path / "one") == _contents(tmp_path / "two")  # byte-identical
    assert [p.name for p in two.paths] == sorted(p.name for p in archive.iterdir())
    again = prepare_volumes(archive, COARSE, tmp_path / "two", workers=2)
    assert again.decoded == 0 and again.summary.used == 6
    assert again.cache_bytes == sum(len(b) for b in _contents(tmp_path / "two").values())


def test_shares_split_the_decoding_and_each_waits_for_the_rest(archive, tmp_path):
    cache = tmp_path / "cache"
    second = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pcrlv2_hub.pretrain.preparation import *; "
         "from pcrlv2_hub.pretrain.volumes import Preprocessing; "
         f"prepare_volumes({str(archive)!r}, Preprocessing(spacing=(2.0, 2.0, 2.0)), "
         f"{str(cache)!r}, workers=1, share=Share(1, 2))"],
    )  # fmt: skip
    first = prepare_volumes(archive, COARSE, cache, workers=1, share=Share(0, 2))
    assert second.wait(timeout=300) == 0
    assert first.decoded == 3 and first.summary.used == 6  # its half, and the other half
    assert _contents(cache) == _contents(_reference(archive, tmp_path))


def test_a_share_that_never_comes_is_named_after_the_timeout(archive, tmp_path):
    with pytest.raises(DataError, match=r"still not in the cache.*--prepare-timeout"):
        prepare_volumes(archive, COARSE, tmp_path, workers=1, share=Share(0, 2), timeout_s=2)


def test_a_killed_prepare_leaves_complete_entries_and_the_next_run_finishes(archive, tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "pcrlv2_hub.cli", "prepare", "--data", str(archive),
               "--cache-dir", str(cache), "--workers", "1", "--preprocess", "spacing=2.0",
               "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True)
    while len(list(cache.glob("*.npy"))) < 2 and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its decoding processes
    process.wait()
    entries = list(cache.glob("*.npy"))
    assert 2 <= len(entries) < 6, "the kill came too late to test anything"
    for entry in entries:  # every entry present is whole
        assert np.load(entry).size > 0
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "6 of 6 volumes ready" in done.stdout
    assert f"decoded {6 - len(entries)} " in done.stdout
    assert not list(cache.glob(".*")), "temporaries of the killed run remain"
    assert _contents(cache) == _contents(_reference(archive, tmp_path))


def test_a_dicom_folder_with_two_series_gives_the_largest_with_a_note(tmp_path):
    chest = sitk.ReadImage(str(SAMPLES / "chest_ct.nii.gz"))
    folder = tmp_path / "data" / "study"
    folder.parent.mkdir()
    write_dicom_series(chest[:, :, :40], folder, series=1, prefix="ct")
    write_dicom_series(chest[:, :, :3], folder, series=2, prefix="scout")
    with pytest.warns(DataWarning, match="2 DICOM series; using the largest \\(40 slices\\)"):
        prepared = prepare_volumes(folder.parent, COARSE, tmp_path / "cache")
    assert prepared.summary.used == 1
    assert prepared.volumes[0].shape[2] == int(39 * chest.GetSpacing()[2] / 2) + 1
    with pytest.warns(DataWarning, match="2 DICOM series"):  # a rerun still says so
        again = prepare_volumes(folder.parent, COARSE, tmp_path / "cache")
    assert again.decoded == 0 and [p for p, _ in again.summary.notes] == [str(folder)]


def test_volumes_smaller_than_a_crop_are_noted_by_name(tmp_path):
    prepared = prepare_volumes(SAMPLES / "abdomen_ct.nii.gz", cache_dir=tmp_path)
    assert prepared.volumes[0].shape[2] < 96  # 30 slices at 3 mm
    with pytest.warns(DataWarning, match="abdomen_ct.*smaller than the largest global crop"):
        prepared.note_smaller_than((112, 112, 96), "the largest global crop")
    (note,) = prepared.summary.notes
    assert note[1].endswith("along z: those crops are zero-padded")


def _reference(archive: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "reference"
    prepare_volumes(archive, COARSE, cache, workers=1)
    return cache


def test_the_share_is_of_the_node_or_with_a_shared_cache_of_all_ranks(monkeypatch):
    for name, value in {"RANK": 5, "WORLD_SIZE": 8, "LOCAL_RANK": 1, "LOCAL_WORLD_SIZE": 4}.items():
        monkeypatch.setenv(name, str(value))
    assert Share.under_launcher() == Share(1, 4)  # node-local cache: this node's 4 ranks
    assert Share.under_launcher(shared_cache=True) == Share(5, 8)


def test_a_cache_inside_the_data_folder_is_not_taken_for_data(tmp_path):
    shutil.copy2(SAMPLES / "abdomen_ct.nii.gz", tmp_path / "ct.nii.gz")
    for _ in range(2):  # the second run would find the first run's .npy entries
        prepared = prepare_volumes(tmp_path, COARSE, tmp_path / "cache")
        assert prepared.summary.found == 1 and [p.name for p in prepared.paths] == ["ct.nii.gz"]
