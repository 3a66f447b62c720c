"""The view recipe of each dimension (the paper's defaults) and what a training step receives.

Each recipe is one frozen dataclass, so a training configuration overrides any value with
``dataclasses.replace(ViewConfig3D(), num_locals=4)``. The defaults are the authors':
their sub-crop scales (``luna_preprocess.py``) and torchio's default ranges for the
transforms they call without arguments (``RandomFlip``: axis 0, p = 0.5; ``RandomAffine``:
scale U(0.9, 1.1) and rotation U(-10, 10) degrees per axis; ``RandomBlur``: sigma U(0, 2)
voxels per axis; ``RandomNoise``: std U(0, 0.25); ``RandomGamma``: log gamma
U(-0.3, 0.3); ``RandomSwap(patch_size=(8, 4, 4))``: 100 swaps); in 2D, their torchvision
pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import InvalidInputError

Size3D = tuple[int, int, int]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewConfig3D:
    """Sub-crops of a CT volume and their corruptions; sizes in voxels, (x, y, z) order."""

    global_size: Size3D = (64, 64, 32)
    global_scales: tuple[Size3D, ...] = ((96, 96, 64), (96, 96, 96), (112, 112, 64), (64, 64, 32))
    min_iou: float = 0.3
    min_tissue: float = 0.0
    """Share of each global crop's voxels that must lie above ``tissue_level`` (0: any
    crop, as the paper's defaults state; see ``tissue.py``)."""
    tissue_level: float = 0.05  # in the [0, 1] voxel scale: -900 HU with the CT window
    local_size: Size3D = (16, 16, 16)
    local_scales: tuple[Size3D, ...] = ((32, 32, 16), (16, 16, 16), (32, 32, 32), (8, 8, 8))
    num_locals: int = 6
    # spatial: applied to a view and its restoration target alike
    flip_axes: tuple[int, ...] = (0,)
    flip_probability: float = 0.5
    rotation_degrees: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    # intensity: inputs only
    blur_sigma: tuple[float, float] = (0.0, 2.0)
    noise_std: tuple[float, float] = (0.0, 0.25)
    log_gamma: tuple[float, float] = (-0.3, 0.3)
    swap_patch: Size3D = (8, 4, 4)
    swap_count: int = 100  # patch pairs swapped in each global input; 0 switches it off

    def __post_init__(self) -> None:
        _check_probabilities(self, "flip_probability", "min_tissue")
        _check_ranges(self, "scale_range", "blur_sigma", "noise_std", "log_gamma")
        sizes = [self.global_size, self.local_size, self.swap_patch]
        sizes += [*self.global_scales, *self.local_scales]
        if not all(_is_size(s) for s in sizes) or not self.global_scales:
            raise InvalidInputError(
                "3D view sizes and scales must be three positive integers (x, y, z) each."
            )
        if not set(self.flip_axes) <= {0, 1, 2}:
            raise InvalidInputError(f"flip_axes must be among 0, 1, 2, not {self.flip_axes}.")
        if self.num_locals < 1 or not self.local_scales or self.swap_count < 0:
            raise InvalidInputError("num_locals needs local_scales; swap_count must be >= 0.")


@dataclass(frozen=True)
class ViewConfig2D:
    """Views of a chest X-ray and their corruptions (the authors' torchvision pipeline)."""

    global_size: int = 224
    global_scale: tuple[float, float] = (0.3, 1.0)  # area fraction of the random resized crop
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.3)
    num_locals: int = 6
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # spatial: part of the view, so the target has it too
    rotation_degrees: float = 10.0
    flip_probability: float = 0.5
    # appearance: inputs only
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.4
    cutout_holes: int = 3  # global inputs only
    cutout_size: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        _check_probabilities(self, "flip_probability", "grayscale_probability", "blur_probability")
        _check_ranges(self, "global_scale", "local_scale", "aspect_ratio", "blur_sigma")
        if min(self.global_size, self.local_size, self.num_locals) < 1 or self.cutout_holes < 0:
            raise InvalidInputError("2D view sizes and num_locals must be positive integers.")
        if not 0 <= self.hue <= 0.5:
            raise InvalidInputError(f"hue must be in [0, 0.5], not {self.hue}.")


@dataclass
class ViewBatch:
    """One corrupted batch, as a training step consumes it.

    ``inputs1``/``inputs2``: the corrupted, normalised global views, shape ``(B, C, *G)``.
    ``targets1``/``targets2``: the same views before the input-only corruptions (3D: the
    clean spatially-augmented crops in [0, 1]; 2D: ImageNet-normalised), same shape.
    ``locals``: the corrupted local views, ``(L * B, C, *Ls)``, view-major: rows
    ``i * B:(i + 1) * B`` are local view ``i`` of every sample.
    """

    inputs1: Tensor
    inputs2: Tensor
    targets1: Tensor
    targets2: Tensor
    locals: Tensor

    @property
    def batch_size(self) -> int:
        return self.inputs1.shape[0]

    @property
    def num_locals(self) -> int:
        return self.locals.shape[0] // self.batch_size


def view_major(views: Tensor) -> Tensor:
    """(B, V, C, ...) -> (V * B, C, ...) with rows ``i * B:(i + 1) * B`` holding view ``i``."""
    return views.transpose(0, 1).reshape(-1, *views.shape[2:])


def _is_size(value: object) -> bool:
    return (
        isinstance(value, tuple | list)
        and len(value) == 3
        and all(isinstance(v, int) and v >= 1 for v in value)
    )


def _check_probabilities(config: object, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise InvalidInputError(f"{name} must be a probability in [0, 1], not {value}.")


def _check_ranges(config: object, *names: str) -> None:
    for name in names:
        low, high = getattr(config, name)
        if low > high:
            raise InvalidInputError(f"{name} must be (low, high) with low <= high: {low, high}.")
