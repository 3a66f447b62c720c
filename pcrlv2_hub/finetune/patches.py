"""Training patches cut from whole cases, with MONAI: foreground oversampling and augmentation.

A whole CT (512 x 512 x 400) does not fit a training step; random patches of a fixed size
do. Uniform patches would rarely contain a small organ or a tumour, so a configurable share
of them is centred on labelled voxels (MONAI's ``RandCropByPosNegLabeld``). Volumes smaller
than a patch are padded (with zeros: the lower end of the intensity window, and
background). The augmentations are the usual ones: flips on every axis, 90-degree
rotations in the axial plane (square patches, x mirrored too), intensity scale and shift.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai import transforms

from ..errors import InvalidInputError


def patch_transform(
    patch_size: Sequence[int],
    *,
    foreground_share: float = 0.5,
    patches_per_case: int = 2,
    augment: bool = True,
    mirror_axes: Sequence[int] = (0, 1, 2),
) -> transforms.Compose:
    """Dict {"image": (C, x, y, z), "label": (1, x, y, z)} -> ``patches_per_case`` patches.

    ``foreground_share``: the expected share of patches centred on a labelled voxel
    (label > 0); the rest are centred anywhere in the volume. ``mirror_axes``: the axes
    flipped at random; leave out x where classes have a side (left and right parotid).
    """
    if not 0.0 <= foreground_share <= 1.0:
        raise InvalidInputError(f"foreground_share must be in [0, 1], not {foreground_share}.")
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise InvalidInputError(f"patch_size must be three positive sizes, not {patch_size}.")
    keys = ["image", "label"]
    steps: list = [
        transforms.SpatialPadd(keys, spatial_size=list(patch_size)),
        transforms.RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=list(patch_size),
            pos=foreground_share,
            neg=1.0 - foreground_share,
            num_samples=patches_per_case,
            allow_smaller=False,
        ),
    ]
    if augment:
        steps += [
            *(transforms.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in mirror_axes),
            transforms.RandScaleIntensityd("image", factors=0.1, prob=0.5),
            transforms.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
        # square patches only (else the shape changes), and only where x may be mirrored:
        # a half turn swaps left and right
        if patch_size[0] == patch_size[1] and {0, 1} <= set(mirror_axes):
            steps.append(transforms.RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1)))
    return transforms.Compose([*steps, transforms.EnsureTyped(keys, track_meta=False)])
