"""Volumes in: real CT in every supported format, resampling, windowing, the cache, bad files."""

from __future__ import annotations

import locale
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series

from pcrlv2_hub.errors import DataError, DataWarning
from pcrlv2_hub.pretrain.preparation import prepare_volumes
from pcrlv2_hub.pretrain.volumes import Preprocessing, find_volumes, read_volume

SAMPLES = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data"
CHEST = SAMPLES / "chest_ct.nii.gz"  # 122 x 102 x 112 voxels at 1.5 mm, int16 HU
ABDOMEN = SAMPLES / "abdomen_ct.nii.gz"  # 122 x 101 x 30 voxels at 3 mm
NATIVE = Preprocessing(spacing=None)


def hounsfield(path: Path) -> np.ndarray:
    """The file's voxels in (x, y, z) order, straight from SimpleITK."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0).astype(np.float32)


@pytest.fixture(scope="module")
def chest_1mm() -> np.ndarray:
    return read_volume(CHEST)


def test_resampled_to_1mm_keeping_the_origin_and_the_extent(chest_1mm):
    # (n - 1) * 1.5 mm of extent -> that many 1 mm steps, plus one
    assert chest_1mm.shape == (182, 152, 167)
    assert chest_1mm.dtype == np.float32
    native = read_volume(CHEST, NATIVE)
    # every 3 mm both grids have a voxel at the same place: values agree there
    np.testing.assert_allclose(chest_1mm[::3, ::3, ::3], native[::2, ::2, ::2], atol=1e-6)
    coarse = read_volume(CHEST, Preprocessing(spacing=3.0))  # one number: isotropic
    assert coarse.shape == (61, 51, 56)


def test_ct_window_clips_and_scales_to_unit_range(chest_1mm):
    assert chest_1mm.min() == 0.0 and chest_1mm.max() == 1.0
    hu = hounsfield(CHEST)
    np.testing.assert_allclose(read_volume(CHEST, NATIVE), np.clip((hu + 1000) / 2000, 0, 1))
    narrow = read_volume(CHEST, Preprocessing(spacing=None, window=(-100.0, 100.0)))
    np.testing.assert_allclose(narrow, np.clip((hu + 100) / 200, 0, 1), atol=1e-6)


def test_mri_gets_a_percentile_window():
    mri = read_volume(CHEST, Preprocessing(spacing=None, modality="mri", percentiles=(5, 95)))
    assert mri.min() == 0.0 and mri.max() == 1.0
    assert 0.04 < (mri == 0).mean() < 0.06 and 0.04 < (mri == 1).mean() < 0.06


def test_metaimage_and_dicom_series_read_back_equal_to_the_nifti(tmp_path):
    image = sitk.ReadImage(str(ABDOMEN))
    sitk.WriteImage(image, str(tmp_path / "ct.mhd"))  # writes ct.mhd + ct.raw, as LUNA16
    write_dicom_series(image, tmp_path / "series")
    expected = read_volume(ABDOMEN)
    assert expected.shape == (364, 301, 88)
    np.testing.assert_allclose(read_volume(tmp_path / "ct.mhd"), expected, atol=1e-6)
    before = locale.getpreferredencoding(False)
    np.testing.assert_allclose(read_volume(tmp_path / "series"), expected, atol=1e-6)
    assert locale.getpreferredencoding(False) == before  # GDCM's "C" locale does not stick
    assert find_volumes(tmp_path) == [tmp_path / "ct.mhd", tmp_path / "series"]


def test_numpy_arrays_are_x_y_z_hounsfield_with_a_given_or_default_spacing(tmp_path):
    hu = hounsfield(ABDOMEN)
    np.save(tmp_path / "ct.npy", hu)
    np.savez(tmp_path / "ct.npz", image=hu, spacing=np.array([3.0, 3.0, 3.0]))
    expected = read_volume(ABDOMEN)
    np.testing.assert_allclose(read_volume(tmp_path / "ct.npz"), expected, atol=1e-6)
    np.testing.assert_allclose(
        read_volume(tmp_path / "ct.npy", Preprocessing(array_spacing=(3.0, 3.0, 3.0))),
        expected,
        atol=1e-6,
    )
    assert read_volume(tmp_path / "ct.npy").shape == hu.shape  # default: 1 mm, as stored


def test_each_volume_is_decoded_once_then_served_from_the_cache(tmp_path):
    source = tmp_path / "data" / "ct.nii.gz"
    source.parent.mkdir()
    shutil.copy2(ABDOMEN, source)
    cache = tmp_path / "cache"
    first = prepare_volumes(source.parent, cache_dir=cache)
    assert first.decoded == 1 and first.summary.used == 1
    (entry,) = cache.glob("*.npy")
    written = entry.stat().st_mtime_ns
    expected = np.asarray(first.volumes[0].array, np.float32)
    np.testing.assert_allclose(expected, read_volume(ABDOMEN), atol=5e-4)  # float16 cache
    assert first.volumes[0].array.flags.c_contiguous  # crops read contiguous runs
    coarse = prepare_volumes(source.parent, Preprocessing(spacing=(2, 2, 2)), cache_dir=cache)
    assert coarse.decoded == 1  # another preprocessing, another entry
    assert len(list(cache.iterdir())) == 2  # and no temporary file left behind

    # Replace the source by garbage of the same size and times: a re-read would fail.
    stat = source.stat()
    source.write_bytes(b"\0" * stat.st_size)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        again = prepare_volumes(source.parent, cache_dir=cache)
    assert again.decoded == 0 and entry.stat().st_mtime_ns == written
    np.testing.assert_array_equal(np.asarray(again.volumes[0].array, np.float32), expected)

    shutil.copy2(ABDOMEN, source)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a newer file
    assert prepare_volumes(source.parent, cache_dir=cache).decoded == 1


def test_cached_volumes_pickle_as_their_path(tmp_path):
    import pickle

    volume = prepare_volumes(ABDOMEN, cache_dir=tmp_path).volumes[0]
    assert volume.array.shape == volume.shape  # opened in this process
    payload = pickle.dumps(volume)
    assert len(payload) < 1000
    copy = pickle.loads(payload)
    assert copy.shape == volume.shape
    np.testing.assert_array_equal(copy[10:20, 5:9, 3], volume[10:20, 5:9, 3])


def test_unreadable_and_truncated_volumes_are_skipped_named_and_counted(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy2(ABDOMEN, data / "good.nii.gz")
    compressed = ABDOMEN.read_bytes()
    (data / "cut.nii.gz").write_bytes(compressed[: len(compressed) // 2])
    sitk.WriteImage(sitk.ReadImage(str(ABDOMEN)), str(data / "plain.nii"))
    plain = (data / "plain.nii").read_bytes()
    (data / "cut.nii").write_bytes(plain[: len(plain) - 1000])
    (data / "plain.nii").unlink()
    (data / "garbage.mhd").write_text("not a volume at all")
    np.save(data / "flat.npy", np.zeros((4, 5)))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.int16)), str(data / "slice.nii"))

    with pytest.warns(DataWarning) as caught:
        prepared = prepare_volumes(data, cache_dir=tmp_path / "cache")
    bad = {"cut.nii.gz", "cut.nii", "garbage.mhd", "flat.npy", "slice.nii"}
    assert {Path(p).name for p, _ in prepared.summary.skipped} == bad
    assert all(any(name in str(w.message) for w in caught) for name in bad)
    assert prepared.summary.found == 6 and prepared.summary.used == 1
    assert [p.name for p in prepared.paths] == ["good.nii.gz"]
    assert "1 of 6" in str(prepared.summary)


def test_volumes_with_impossible_geometry_are_skipped_with_the_reason(tmp_path):
    """Headers a big archive holds: each would hang, crash or exhaust memory if used."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy2(ABDOMEN, data / "good.nii.gz")
    block = np.zeros((8, 8, 8), np.int16)
    for name, spacing in {"nan": [np.nan, 1, 1], "zero": [0, 1, 1], "negative": [-1, 1, 1]}.items():
        np.savez(data / f"{name}_spacing.npz", image=block, spacing=np.array(spacing))
    image = sitk.GetImageFromArray(np.zeros((8, 8, 64), np.int16))
    image.SetSpacing((50.0, 1.0, 1.0))  # 3150 mm long: a 50 mm header spacing
    sitk.WriteImage(image, str(data / "fifty_mm.nii.gz"))
    image = sitk.GetImageFromArray(np.zeros((3, 3, 3), np.int16))
    image.SetSpacing((1000.0, 1000.0, 1000.0))  # 2 m wide, but 2001^3 voxels at 1 mm
    sitk.WriteImage(image, str(data / "huge.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(block), str(data / "tilted.mhd"), useCompression=False)
    header = (data / "tilted.mhd").read_text()
    (data / "tilted.mhd").write_text(header.replace("0 1 0 0 0 1", "0 1 0 1e308 0 1"))

    with pytest.warns(DataWarning):
        prepared = prepare_volumes(data, cache_dir=tmp_path / "cache")
    reasons = {Path(path).name: reason for path, reason in prepared.summary.skipped}
    assert [p.name for p in prepared.paths] == ["good.nii.gz"]
    for name in ("nan_spacing.npz", "zero_spacing.npz", "negative_spacing.npz"):
        assert "not positive and finite" in reasons[name]
    assert "3150 mm long" in reasons["fifty_mm.nii.gz"]
    assert "more than the limit" in reasons["huge.nii.gz"]
    assert "not a rotation" in reasons["tilted.mhd"]


def test_nothing_usable_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no volumes"):
        prepare_volumes(tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b junk")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="could be read"):
        prepare_volumes(tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="does not exist"):
        find_volumes(tmp_path / "missing")


def test_sources_are_folders_globs_and_list_files(tmp_path):
    nested = tmp_path / "site" / "patient1"
    nested.mkdir(parents=True)
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy2(ABDOMEN, tmp_path / "site" / name)
    shutil.copy2(ABDOMEN, nested / "c.nii.gz")
    (nested / "notes.txt").write_text("not a volume")
    expected = [nested / "c.nii.gz", tmp_path / "site/a.nii.gz", tmp_path / "site/b.nii.gz"]
    assert find_volumes(tmp_path) == sorted(expected)
    assert find_volumes(str(tmp_path / "**" / "c.nii.gz")) == [nested / "c.nii.gz"]
    listing = tmp_path / "train.txt"
    listing.write_text("# training split\nsite/a.nii.gz\n\n" + str(nested / "c.nii.gz") + "\n")
    assert find_volumes(listing) == sorted([nested / "c.nii.gz", tmp_path / "site/a.nii.gz"])
    assert find_volumes([listing, tmp_path / "site/b.nii.gz"]) == sorted(expected)
