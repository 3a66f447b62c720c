"""3D corruptions on a batch of real CT crops: shapes, what touches targets, each corruption."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from pcrlv2_hub.errors import InvalidInputError
from pcrlv2_hub.pretrain.corruptions import (
    _sample_trilinear,
    gaussian_blur,
    random_flip_affine,
    random_swap,
)
from pcrlv2_hub.pretrain.crops import SubCropSampler
from pcrlv2_hub.pretrain.dataset import SubCropDataset, corrupt_batch
from pcrlv2_hub.pretrain.preparation import prepare_volumes
from pcrlv2_hub.pretrain.views import ViewConfig2D, ViewConfig3D

CHEST = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data" / "chest_ct.nii.gz"
RECIPE = ViewConfig3D()
NO_SPATIAL = replace(RECIPE, flip_probability=0.0, rotation_degrees=0.0, scale_range=(1.0, 1.0))
NO_INTENSITY = replace(
    RECIPE, blur_sigma=(0.0, 0.0), noise_std=(0.0, 0.0), log_gamma=(0.0, 0.0), swap_count=0
)
CLEAN = replace(NO_INTENSITY, flip_probability=0.0, rotation_degrees=0.0, scale_range=(1.0, 1.0))
# the spatial resampling places voxels to ~1e-4 voxel (float32 positions in a tall 2D image),
# so an identity transform returns values within this of the clean ones
RESAMPLED = {"atol": 1e-3, "rtol": 0}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Three items of clean sub-crops of the sample chest CT, collated."""
    volumes = prepare_volumes(CHEST, cache_dir=tmp_path_factory.mktemp("cache")).volumes
    dataset = SubCropDataset(volumes, SubCropSampler(RECIPE), items_per_epoch=3, seed=0)
    return default_collate([dataset[i] for i in range(3)])


def corrupt(batch, config, seed=0):
    return corrupt_batch(batch, torch.Generator().manual_seed(seed), config)


def znorm(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    return (x - x.mean(dims, keepdim=True)) / x.std(dims, unbiased=False, keepdim=True)


def test_a_batch_becomes_a_view_batch_of_the_paper_shapes(batch):
    views = corrupt(batch, RECIPE)
    for name in ("inputs1", "inputs2", "targets1", "targets2"):
        tensor = getattr(views, name)
        assert tensor.shape == (3, 1, 64, 64, 32) and tensor.dtype == torch.float32
    assert views.locals.shape == (18, 1, 16, 16, 16)
    assert views.batch_size == 3 and views.num_locals == 6
    for inputs in (views.inputs1, views.inputs2, views.locals):  # z-normalised per sample
        flat = inputs.flatten(1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(len(flat)), atol=1e-4, rtol=0)
        torch.testing.assert_close(flat.std(1), torch.ones(len(flat)), atol=1e-3, rtol=0)
    targets = torch.cat([views.targets1, views.targets2])
    assert targets.min() >= 0 and targets.max() <= 1 + 1e-6  # clean views stay in [0, 1]
    assert not torch.equal(views.inputs1, znorm(views.targets1))


def test_without_corruptions_inputs_are_the_normalised_clean_views_view_major(batch):
    views = corrupt(batch, CLEAN)
    torch.testing.assert_close(views.targets1, batch["globals"][:, 0], **RESAMPLED)
    torch.testing.assert_close(views.targets2, batch["globals"][:, 1], **RESAMPLED)
    torch.testing.assert_close(views.inputs1, znorm(views.targets1), atol=1e-4, rtol=0)
    for i in range(6):  # rows i * B:(i + 1) * B are local view i of every sample
        expected = znorm(batch["locals"][:, i])
        torch.testing.assert_close(views.locals[3 * i : 3 * i + 3], expected, atol=1e-4, rtol=0)


def test_targets_carry_the_spatial_transform_of_their_input(batch):
    views = corrupt(batch, NO_INTENSITY)  # flips and affine on, intensity off
    assert not torch.allclose(views.targets1, batch["globals"][:, 0])
    torch.testing.assert_close(views.inputs1, znorm(views.targets1), atol=1e-4, rtol=0)
    torch.testing.assert_close(views.inputs2, znorm(views.targets2), atol=1e-4, rtol=0)


def test_flips_and_scaling_follow_torchio_conventions():
    volume = torch.rand(2, 1, 16, 12, 8)
    generator = torch.Generator().manual_seed(0)
    flip = replace(NO_SPATIAL, flip_axes=(0, 2), flip_probability=1.0)
    flipped = random_flip_affine(volume, generator, flip)
    torch.testing.assert_close(flipped, volume.flip(2, 4), **RESAMPLED)
    # a centred ball, scaled by 1.2 along each axis, looks 1.2 times larger: 1.728 x the mass
    axes = [torch.arange(n) - (n - 1) / 2 for n in (32, 32, 32)]
    radius = sum(a.view([-1 if i == k else 1 for i in range(3)]) ** 2 for k, a in enumerate(axes))
    ball = (radius.sqrt() < 8).float()[None, None]
    zoom = replace(NO_SPATIAL, scale_range=(1.2, 1.2))
    ratio = random_flip_affine(ball, generator, zoom).sum() / ball.sum()
    assert ratio == pytest.approx(1.2**3, rel=0.03)
    turned = random_flip_affine(ball, generator, replace(NO_SPATIAL, rotation_degrees=10.0))
    assert (turned - ball).abs().mean() < 0.02  # a ball turned about its centre stays put


def test_trilinear_reads_equal_3d_grid_sample_inside_and_outside_the_volume():
    generator = torch.Generator().manual_seed(0)
    volume = torch.rand(2, 1, 12, 10, 8, generator=generator)
    sizes = torch.tensor([12.0, 10.0, 8.0]).view(1, 3, 1, 1, 1)
    # voxel positions, up to 3 voxels beyond each face
    positions = torch.rand(2, 3, 5, 6, 7, generator=generator) * (sizes + 6) - 3
    grid = ((2 * positions + 1) / sizes - 1).flip(1).movedim(1, -1)  # (z, y, x) in [-1, 1]
    expected = F.grid_sample(volume, grid, align_corners=False)
    torch.testing.assert_close(_sample_trilinear(volume, positions), expected, atol=1e-4, rtol=0)


def test_blur_matches_a_gaussian_and_keeps_flat_images_flat():
    impulse = torch.zeros(1, 1, 41)
    impulse[0, 0, 20] = 1
    sigma = 2.0
    blurred = gaussian_blur(impulse, torch.tensor([[sigma]]))[0, 0]
    offsets = torch.arange(41) - 20.0
    expected = torch.exp(-(offsets**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    torch.testing.assert_close(blurred, expected, atol=1e-4, rtol=0)
    flat = torch.full((2, 1, 8, 6, 4), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, torch.rand(2, 3) * 2), flat)
    volume = torch.rand(2, 1, 8, 6, 4)
    assert torch.equal(gaussian_blur(volume, torch.zeros(2, 3)), volume)


def test_gamma_and_noise_act_on_the_inputs_only(batch):
    squared = replace(CLEAN, log_gamma=(math.log(2), math.log(2)))
    views = corrupt(batch, squared)
    torch.testing.assert_close(views.targets1, batch["globals"][:, 0], **RESAMPLED)
    torch.testing.assert_close(views.inputs1, znorm(views.targets1**2), atol=1e-4, rtol=0)
    noisy = corrupt(batch, replace(CLEAN, noise_std=(0.25, 0.25)))
    # after z-normalisation, the input's correlation with its target is s / sqrt(s^2 + 0.25^2)
    target = noisy.targets1.flatten(1)
    spread = target.std(dim=1)
    correlation = (znorm(noisy.inputs1).flatten(1) * znorm(noisy.targets1).flatten(1)).mean(1)
    torch.testing.assert_close(
        correlation, spread / (spread**2 + 0.25**2).sqrt(), atol=0.01, rtol=0
    )


def test_patch_swapping_moves_blocks_of_global_inputs_only(batch):
    views = corrupt(batch, replace(CLEAN, swap_count=100))
    for inputs, targets in ((views.inputs1, views.targets1), (views.inputs2, views.targets2)):
        expected = znorm(targets)
        changed = (inputs - expected).abs() > 1e-4
        assert 0 < changed.float().mean() <= 200 * 8 * 4 * 4 / (64 * 64 * 32)
        torch.testing.assert_close(
            inputs.flatten(1).sort().values, expected.flatten(1).sort().values
        )
    expected_locals = znorm(batch["locals"].transpose(0, 1).reshape(18, 1, 16, 16, 16))
    torch.testing.assert_close(views.locals, expected_locals, atol=1e-4, rtol=0)


def test_swapping_exchanges_two_whole_blocks():
    x = torch.arange(24 * 8 * 8, dtype=torch.float32).view(1, 1, 24, 8, 8)  # room for 2 blocks
    swapped = random_swap(x, torch.Generator().manual_seed(1), (8, 4, 4), count=1)[0, 0]
    moved = (swapped != x[0, 0]).nonzero()
    first, second = moved[moved[:, 0] < 12], moved[moved[:, 0] >= 12]
    blocks = []
    for voxels in (first, second):
        low, high = voxels.min(0).values, voxels.max(0).values + 1
        assert (high - low).tolist() == [8, 4, 4] and len(voxels) == 128
        blocks.append(tuple(map(slice, low.tolist(), high.tolist())))
    assert torch.equal(swapped[blocks[0]], x[0, 0][blocks[1]])
    assert torch.equal(swapped[blocks[1]], x[0, 0][blocks[0]])


def test_a_seeded_generator_gives_the_same_corruptions(batch):
    first, again, other = (
        corrupt(batch, RECIPE, 5),
        corrupt(batch, RECIPE, 5),
        corrupt(batch, RECIPE, 6),
    )
    for name in ("inputs1", "inputs2", "targets1", "targets2", "locals"):
        assert torch.equal(getattr(first, name), getattr(again, name))
        assert not torch.equal(getattr(first, name), getattr(other, name))


def test_a_recipe_of_the_wrong_dimension_is_refused(batch):
    with pytest.raises(InvalidInputError, match="2D recipe"):
        corrupt(batch, ViewConfig2D())
    with pytest.raises(InvalidInputError, match="probability"):
        replace(RECIPE, flip_probability=1.5)
