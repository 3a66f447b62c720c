"""The sub-crop sampler on real CT, and the dataset that serves its crops."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pcrlv2_hub.pretrain.crops import SubCropSampler
from pcrlv2_hub.pretrain.dataset import SubCropDataset
from pcrlv2_hub.pretrain.preparation import prepare_volumes
from pcrlv2_hub.pretrain.views import ViewConfig3D

CHEST = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data" / "chest_ct.nii.gz"
CONFIG = ViewConfig3D()


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    """The sample chest CT at 1 mm (182 x 152 x 167), memory-mapped from a fresh cache."""
    return prepare_volumes(CHEST, cache_dir=tmp_path_factory.mktemp("cache")).volumes[0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Box IoU from the overlap along each axis, one box at a time."""
    overlap = [max(0, min(a[1, k], b[1, k]) - max(a[0, k], b[0, k])) for k in range(3)]
    intersection = float(np.prod(overlap))
    return intersection / (np.prod(a[1] - a[0]) + np.prod(b[1] - b[0]) - intersection)


def test_global_pairs_overlap_and_every_box_lies_in_the_volume(chest):
    sampler = SubCropSampler(CONFIG)
    scales = {tuple(s) for s in CONFIG.global_scales}
    local_scales = {tuple(s) for s in CONFIG.local_scales}
    for seed in range(500):
        global_boxes, local_boxes = sampler.boxes(chest.shape, np.random.default_rng(seed))
        assert iou(*global_boxes) > 0.3
        for box in global_boxes:
            assert tuple(box[1] - box[0]) in scales
            assert (box[0] >= 0).all() and (box[1] <= chest.shape).all()
        union = global_boxes[:, 0].min(axis=0), global_boxes[:, 1].max(axis=0)
        for box in local_boxes:
            assert tuple(box[1] - box[0]) in local_scales
            assert (box[0] >= union[0]).all() and (box[1] <= union[1]).all()
    crops = sampler(chest, np.random.default_rng(0))
    np.testing.assert_array_equal(
        np.concatenate([crops.global_boxes, crops.local_boxes]),
        np.concatenate(sampler.boxes(chest.shape, np.random.default_rng(0))),
    )


def test_crops_have_the_view_shapes_and_hold_the_volume_voxels(chest):
    sampler = SubCropSampler(CONFIG)
    crops = sampler(chest, np.random.default_rng(0))
    assert crops.globals.shape == (2, 1, 64, 64, 32) and crops.globals.dtype == torch.float32
    assert crops.locals.shape == (6, 1, 16, 16, 16)
    assert crops.globals.min() >= 0 and crops.globals.max() <= 1
    # a box of exactly the view size is cut, not resized: it equals the volume there
    same_size = replace(CONFIG, global_scales=((64, 64, 32),), local_scales=((16, 16, 16),))
    crops = SubCropSampler(same_size)(chest, np.random.default_rng(1))
    for crop, (start, stop) in zip(crops.globals, crops.global_boxes, strict=True):
        region = chest[tuple(map(slice, start, stop))]
        np.testing.assert_array_equal(crop[0].numpy(), region.astype(np.float32))
    start, stop = crops.local_boxes[0]
    expected = chest[tuple(map(slice, start, stop))].astype(np.float32)
    np.testing.assert_array_equal(crops.locals[0, 0].numpy(), expected)


def test_larger_boxes_are_resized_trilinearly(chest):
    """Cut from the memory-mapped cache, crops equal the resized copy of their box."""
    sampler = SubCropSampler(CONFIG)
    for seed in range(3):
        crops = sampler(chest, np.random.default_rng(seed))
        kinds = (
            (crops.globals, crops.global_boxes, CONFIG.global_size),
            (crops.locals, crops.local_boxes, CONFIG.local_size),
        )
        for views, boxes, size in kinds:
            for crop, (start, stop) in zip(views, boxes, strict=True):
                region = np.ascontiguousarray(chest[tuple(map(slice, start, stop))], np.float32)
                expected = F.interpolate(
                    torch.from_numpy(region)[None, None],
                    size,
                    mode="trilinear",
                    align_corners=False,
                )
                torch.testing.assert_close(crop, expected[0])


def test_a_volume_smaller_than_the_crops_is_zero_padded():
    volume = np.ones((20, 25, 10), np.float32)
    size = (32, 32, 16)
    config = replace(
        CONFIG,
        global_size=size,
        global_scales=(size,),
        local_size=size,
        local_scales=(size,),
        num_locals=2,
    )
    for seed in range(8):
        crops = SubCropSampler(config)(volume, np.random.default_rng(seed))
        for box in np.concatenate([crops.global_boxes, crops.local_boxes]):
            assert (box[0] <= 0).all() and (box[1] >= volume.shape).all()  # covers the volume
        for crop in torch.cat([crops.globals, crops.locals]):
            assert crop.sum() == volume.sum()  # all of the volume, and zeros around it
            assert set(crop.unique().tolist()) == {0.0, 1.0}


def test_crops_are_reproducible_from_the_seed(chest):
    sampler = SubCropSampler(CONFIG)
    first = sampler(chest, np.random.default_rng(7))
    again = sampler(chest, np.random.default_rng(7))
    other = sampler(chest, np.random.default_rng(8))
    assert torch.equal(first.globals, again.globals) and torch.equal(first.locals, again.locals)
    assert not torch.equal(first.globals, other.globals)


def test_an_impossible_overlap_falls_back_to_one_box_twice(chest):
    sampler = SubCropSampler(replace(CONFIG, min_iou=1.0), candidates=8, max_rounds=2)
    crops = sampler(chest, np.random.default_rng(0))
    np.testing.assert_array_equal(crops.global_boxes[0], crops.global_boxes[1])


def test_dataset_items_depend_on_seed_epoch_and_index_only(chest):
    dataset = SubCropDataset([chest], SubCropSampler(CONFIG), items_per_epoch=4, seed=3)
    item = dataset[2]
    assert set(item) == {"globals", "locals"}
    assert torch.equal(dataset[2]["globals"], item["globals"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2]["globals"], item["globals"])
    dataset.set_epoch(0)
    alone = torch.cat([b["globals"] for b in DataLoader(dataset, batch_size=2)])
    workers = DataLoader(dataset, batch_size=2, num_workers=2)
    assert torch.equal(torch.cat([b["globals"] for b in workers]), alone)
    with pytest.raises(IndexError):
        dataset[4]


def test_tissue_filter_keeps_global_crops_on_the_body(tmp_path):
    """A real head-and-neck CT whose grid is mostly air (OpenKBP, at the openct_small
    recipe's 3 x 3 x 1.5 mm and half-size views): shares match a brute-force count of the
    coarse map's voxels, and with ``min_tissue`` every global crop is mostly tissue."""
    from pcrlv2_hub.pretrain.tissue import TissueMap
    from pcrlv2_hub.pretrain.volumes import Preprocessing

    head = Path(__file__).parent / "data" / "openkbp" / "images" / "pt_4.nii.gz"
    volume = prepare_volumes(head, Preprocessing(spacing=(3.0, 3.0, 1.5)), tmp_path).volumes[0]
    config = ViewConfig3D(
        global_size=(32, 32, 16),
        global_scales=((48, 48, 32), (48, 48, 48), (56, 56, 32), (32, 32, 16)),
        local_size=(8, 8, 8),
        local_scales=((16, 16, 8), (8, 8, 8), (16, 16, 16), (4, 4, 4)),
    )
    level = config.tissue_level
    tissue = TissueMap(volume, level)
    rng = np.random.default_rng(0)
    for _ in range(20):
        start = rng.integers(0, 40, size=3) * 4
        box = np.stack([start, start + rng.integers(6, 24, size=3) * 4])  # may leave the volume
        coarse = np.asarray(volume[tuple(slice(a, b, 4) for a, b in zip(*box, strict=True))])
        brute = (coarse > level).sum() / np.prod((box[1] - box[0]) // 4)  # outside: air
        assert tissue.share(box[None])[0] == pytest.approx(brute)
    plain, filtered = SubCropSampler(config), SubCropSampler(replace(config, min_tissue=0.5))
    shares = {"plain": [], "filtered": []}
    for seed in range(60):
        for name, sampler in (("plain", plain), ("filtered", filtered)):
            crops = sampler(volume, np.random.default_rng(seed))
            shares[name] += [(g > level).float().mean().item() for g in crops.globals]
    assert min(shares["plain"]) < 0.1 and np.mean(shares["plain"]) < 0.4  # mostly air
    assert min(shares["filtered"]) > 0.4 and np.mean(shares["filtered"]) > 0.6
