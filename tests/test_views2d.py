"""The 2D pipeline on the real sample chest X-rays: reading, views, corruptions, the dataset."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import default_collate

from pcrlv2_hub.errors import DataError, DataWarning
from pcrlv2_hub.pretrain.dataset import ImageViewDataset, corrupt_batch
from pcrlv2_hub.pretrain.views import IMAGENET_MEAN, IMAGENET_STD, ViewConfig2D
from pcrlv2_hub.pretrain.views2d import ImageViewSampler, prepare_images, read_image

XRAYS = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data" / "chestxray"
FIRST = XRAYS / "0_normal" / "00000002_000.png"
SMALL = ViewConfig2D(global_size=32, local_size=16, cutout_size=8)  # fast, same recipe
NO_APPEARANCE = replace(
    SMALL,
    grayscale_probability=0.0,
    blur_probability=0.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    hue=0.0,
    cutout_holes=0,
)
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    images = prepare_images(XRAYS).paths
    dataset = ImageViewDataset(images, ImageViewSampler(SMALL), items_per_epoch=4, seed=0)
    return default_collate([dataset[i] for i in range(4)])


def corrupt(batch, config, seed=0):
    return corrupt_batch(batch, torch.Generator().manual_seed(seed), config)


def test_images_are_read_as_three_channel_uint8(tmp_path):
    image = read_image(FIRST)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    np.testing.assert_array_equal(image[0].numpy(), np.asarray(Image.open(FIRST).convert("L")))
    # a 16-bit PNG and a MONOCHROME1 DICOM come back on the 0-255 scale, bright = dense
    gray = np.asarray(Image.open(FIRST).convert("L")).astype(np.uint16)
    Image.fromarray(gray * 256).save(tmp_path / "deep.png")
    assert torch.equal(read_image(tmp_path / "deep.png")[0], _stretched(gray))
    sitk.WriteImage(sitk.GetImageFromArray((gray * 10).astype(np.int16)), str(tmp_path / "a.dcm"))
    assert torch.equal(read_image(tmp_path / "a.dcm")[0], _stretched(gray))
    sitk.WriteImage(
        sitk.GetImageFromArray((4000 - gray * 10).astype(np.int16)), str(tmp_path / "b.dcm")
    )
    inverted = (tmp_path / "b.dcm").read_bytes().replace(b"MONOCHROME2", b"MONOCHROME1")
    (tmp_path / "b.dcm").write_bytes(inverted)  # white is the lowest value
    assert torch.equal(read_image(tmp_path / "b.dcm")[0], _stretched(gray))


def test_unreadable_images_are_skipped_named_and_counted(tmp_path):
    shutil.copytree(XRAYS, tmp_path / "xrays")
    data = FIRST.read_bytes()
    (tmp_path / "xrays" / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "xrays" / "junk.jpg").write_text("not an image")
    with pytest.warns(DataWarning) as caught:
        prepared = prepare_images(tmp_path / "xrays")
    assert {Path(p).name for p, _ in prepared.summary.skipped} == {"cut.png", "junk.jpg"}
    assert all(any(n in str(w.message) for w in caught) for n in ("cut.png", "junk.jpg"))
    assert len(prepared.paths) == 24 and prepared.summary.found == 26
    with pytest.raises(DataError, match="cannot be read"):
        read_image(tmp_path / "xrays" / "junk.jpg")
    with pytest.raises(DataError, match="no images"):
        prepare_images(tmp_path / "xrays" / "0_normal" / "missing*.png")


def test_views_have_the_recipe_sizes_and_are_reproducible():
    sampler = ImageViewSampler(ViewConfig2D())
    image = read_image(FIRST)
    views = sampler(image, np.random.default_rng(0))
    assert views["globals"].shape == (2, 3, 224, 224) and views["locals"].shape == (6, 3, 96, 96)
    assert views["globals"].dtype == torch.float32
    assert views["globals"].min() >= 0 and views["globals"].max() <= 1
    again = sampler(image, np.random.default_rng(0))
    assert torch.equal(views["globals"], again["globals"])
    assert not torch.equal(views["globals"], sampler(image, np.random.default_rng(1))["globals"])


def test_a_full_area_crop_without_rotation_is_the_resized_image():
    config = replace(
        SMALL,
        global_scale=(1.0, 1.0),
        aspect_ratio=(1.0, 1.0),
        rotation_degrees=0.0,
        flip_probability=0.0,
    )
    image = read_image(FIRST)
    views = ImageViewSampler(config)(image, np.random.default_rng(0))
    expected = TF.resize(image, [32, 32], antialias=True).float() / 255
    torch.testing.assert_close(views["globals"][0], expected)
    flipped = ImageViewSampler(replace(config, flip_probability=1.0))(
        image, np.random.default_rng(0)
    )
    torch.testing.assert_close(flipped["globals"][0], expected.flip(-1))


def test_without_appearance_changes_inputs_are_the_normalised_targets(batch):
    views = corrupt(batch, NO_APPEARANCE)
    assert views.inputs1.shape == (4, 3, 32, 32) and views.locals.shape == (24, 3, 16, 16)
    torch.testing.assert_close(views.targets1, (batch["globals"][:, 0] - MEAN) / STD)
    torch.testing.assert_close(views.inputs2, views.targets2)
    torch.testing.assert_close(views.locals[4:8], (batch["locals"][:, 1] - MEAN) / STD)


def test_cutout_zeroes_squares_of_the_global_inputs_only(batch):
    views = corrupt(batch, replace(NO_APPEARANCE, cutout_holes=3))
    for inputs, targets in ((views.inputs1, views.targets1), (views.inputs2, views.targets2)):
        cut = (inputs != targets).all(dim=1)
        assert (inputs.permute(1, 0, 2, 3)[:, cut] == 0).all()
        fraction = cut.flatten(1).float().mean(1)
        assert (fraction > 0).all() and (fraction <= 3 * 8 * 8 / 32**2).all()
    torch.testing.assert_close(views.locals, (_locals(batch) - MEAN) / STD)


def test_appearance_corruptions_follow_their_definitions(batch):
    colour = torch.rand(2, 1, 3, 8, 8)
    colour_batch = {"globals": colour.expand(2, 2, 3, 8, 8), "locals": colour}
    gray = corrupt(colour_batch, replace(NO_APPEARANCE, grayscale_probability=1.0))
    restored = gray.inputs1 * STD + MEAN
    torch.testing.assert_close(restored[:, 0], restored[:, 1])  # channels equal: gray
    # hue and saturation leave gray X-rays unchanged; brightness scales them
    for change in ({"hue": 0.5}, {"saturation": 0.9}):
        views = corrupt(batch, replace(NO_APPEARANCE, **change))
        torch.testing.assert_close(views.inputs1, views.targets1, atol=1e-4, rtol=0)
    brighter = corrupt(batch, replace(NO_APPEARANCE, brightness=0.4))
    ratio = (brighter.inputs1 * STD + MEAN) / (batch["globals"][:, 0] + 1e-6)
    unsaturated = (batch["globals"][:, 0] > 0.05) & (batch["globals"][:, 0] < 0.7)
    per_image = [r[m] for r, m in zip(ratio, unsaturated, strict=True)]
    assert all(r.min() >= 0.6 - 1e-3 and r.max() - r.min() < 1e-3 for r in per_image)
    blurred = corrupt(batch, replace(NO_APPEARANCE, blur_probability=1.0))
    assert blurred.inputs1.diff(dim=-1).abs().mean() < blurred.targets1.diff(dim=-1).abs().mean()


def test_corruptions_are_seeded_and_the_dataset_follows_the_epoch(batch):
    first, again = corrupt(batch, SMALL, 3), corrupt(batch, SMALL, 3)
    assert torch.equal(first.inputs1, again.inputs1) and torch.equal(first.locals, again.locals)
    assert not torch.equal(first.inputs1, corrupt(batch, SMALL, 4).inputs1)
    dataset = ImageViewDataset([FIRST], ImageViewSampler(SMALL), items_per_epoch=2, seed=0)
    item = dataset[1]["globals"]
    assert torch.equal(dataset[1]["globals"], item)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1]["globals"], item)


def _locals(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["locals"].transpose(0, 1).reshape(-1, *batch["locals"].shape[2:])


def _stretched(gray: np.ndarray) -> torch.Tensor:
    low, high = int(gray.min()), int(gray.max())
    return torch.from_numpy(np.round((gray - low) * (255 / (high - low))).astype(np.uint8))
