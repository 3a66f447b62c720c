"""Chest X-rays in, and the paper's 2D views and appearance corruptions out.

Per image, in the dataset (the spatial part, which the restoration target shares): two
224 x 224 global views (random resized crop over 30-100 % of the area) and six 96 x 96
local views (5-30 %), each rotated by up to 10 degrees and flipped with p = 0.5, as the
authors' torchvision pipeline does. Per batch, on the training device (inputs only):
grayscale (p = 0.2), Gaussian blur (p = 0.5, sigma 0.1-2), colour jitter (0.4 each),
ImageNet normalisation, and cutout of three 32 x 32 squares on the global inputs.
Targets are the ImageNet-normalised clean views.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..errors import DataError
from .corruptions import gaussian_blur
from .sources import DataSource, DataSummary, expand_source
from .views import ViewBatch, ViewConfig2D, view_major

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
_READ_ERRORS = (OSError, RuntimeError, ValueError, UnidentifiedImageError, SyntaxError)


@dataclass
class PreparedImages:
    """The readable images of a data source, and which were skipped and why."""

    paths: list[Path]
    summary: DataSummary


def find_images(source: DataSource) -> list[Path]:
    """PNG, JPEG and DICOM images in a folder, glob, list file or sequence of them."""
    return expand_source(
        source, lambda p: p.name.lower().endswith(IMAGE_SUFFIXES), "images (.png, .jpg, .dcm)"
    )


def prepare_images(source: DataSource) -> PreparedImages:
    """Find the images and check each file (PNG checksums, DICOM header) before training.

    An unreadable or truncated image is skipped with a DataWarning naming it and is
    counted in the summary; DataError when none is usable.
    """
    paths = find_images(source)
    summary = DataSummary(found=len(paths))
    usable = []
    for path in paths:
        try:
            _check_image(path)
            usable.append(path)
        except _READ_ERRORS as error:
            summary.skip(path, " ".join(str(error).split())[:200] or type(error).__name__)
    if not usable:
        raise DataError(f"none of the {len(paths)} images in {source!s} could be read ({summary}).")
    return PreparedImages(usable, summary)


def read_image(path: str | os.PathLike) -> Tensor:
    """An image as uint8 (3, H, W): gray images repeated over RGB, as the authors did.

    16-bit PNGs and DICOM are scaled from their own range to 0-255, with dense tissue
    bright (DICOM MONOCHROME1 images come inverted by the reader).
    """
    path = Path(path)
    try:
        if path.name.lower().endswith(".dcm"):
            pixels = _read_dicom(path)
        else:
            with Image.open(path) as image:
                if image.mode in ("I", "I;16", "I;16B", "F"):
                    pixels = _to_uint8(np.asarray(image, dtype=np.float32))
                else:
                    pixels = np.asarray(image.convert("RGB"))
    except _READ_ERRORS as error:
        raise DataError(
            f"{path} cannot be read as an image ({error}); remove or replace it."
        ) from error
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(pixels[:, :, :3].transpose(2, 0, 1)))


class ImageViewSampler:
    """The clean global and local views of one image, drawn with a numpy Generator."""

    def __init__(self, config: ViewConfig2D | None = None):
        self.config = config or ViewConfig2D()

    def __call__(self, image: Tensor, rng: np.random.Generator) -> dict[str, Tensor]:
        """``image``: uint8 (3, H, W). Returns float32 views in [0, 1] (see the module)."""
        c = self.config
        globals_ = [self._view(image, c.global_size, c.global_scale, rng) for _ in range(2)]
        locals_ = [self._view(image, c.local_size, c.local_scale, rng) for _ in range(c.num_locals)]
        return {"globals": torch.stack(globals_), "locals": torch.stack(locals_)}

    def _view(
        self, image: Tensor, size: int, scale: tuple[float, float], rng: np.random.Generator
    ) -> Tensor:
        top, left, height, width = _resized_crop_box(image.shape[-2:], scale, self.config, rng)
        view = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
        degrees = self.config.rotation_degrees
        view = TF.rotate(view, float(rng.uniform(-degrees, degrees)))
        if rng.random() < self.config.flip_probability:
            view = TF.horizontal_flip(view)
        return view.float().div_(255)


def corrupt_views_2d(
    globals_: Tensor, locals_: Tensor, generator: torch.Generator, config: ViewConfig2D
) -> ViewBatch:
    """Corrupt a batch of clean views on ``generator.device``.

    ``globals_``: (B, 2, 3, S, S) and ``locals_``: (B, L, 3, s, s), in [0, 1], as
    :class:`~pcrlv2_hub.pretrain.dataset.ImageViewDataset` batches them.
    """
    device = generator.device
    views = view_major(globals_.to(device, torch.float32, non_blocking=True))
    local_views = view_major(locals_.to(device, torch.float32, non_blocking=True))
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    targets = (views - mean) / std
    inputs = (_appearance(views, generator, config) - mean) / std
    inputs = _cutout(inputs, generator, config.cutout_holes, config.cutout_size)
    local_inputs = (_appearance(local_views, generator, config) - mean) / std
    inputs1, inputs2 = inputs.chunk(2)
    targets1, targets2 = targets.chunk(2)
    return ViewBatch(inputs1, inputs2, targets1, targets2, local_inputs)


def _check_image(path: Path) -> None:
    if path.name.lower().endswith(".dcm"):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    else:
        with Image.open(path) as image:
            image.verify()


def _read_dicom(path: Path) -> np.ndarray:
    """SimpleITK (GDCM) already inverts MONOCHROME1 images, so bright means dense."""
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return _to_uint8(np.squeeze(pixels).astype(np.float32))


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    low, high = float(pixels.min()), float(pixels.max())
    return ((pixels - low) * (255 / max(high - low, 1e-6))).round().astype(np.uint8)


def _resized_crop_box(
    image_size: tuple[int, int],
    scale: tuple[float, float],
    config: ViewConfig2D,
    rng: np.random.Generator,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) like torchvision's RandomResizedCrop: a random area and
    aspect ratio, ten tries, else the largest centred box with an allowed aspect ratio."""
    height, width = image_size
    area = height * width * rng.uniform(*scale, size=attempts)
    aspect = np.exp(rng.uniform(*np.log(config.aspect_ratio), size=attempts))
    widths = np.round(np.sqrt(area * aspect)).astype(int)
    heights = np.round(np.sqrt(area / aspect)).astype(int)
    fits = np.flatnonzero((widths > 0) & (widths <= width) & (heights > 0) & (heights <= height))
    if fits.size:
        h, w = heights[fits[0]], widths[fits[0]]
        return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), int(h), int(w)
    low, high = config.aspect_ratio
    w = min(width, round(height * high))
    h = min(height, round(w / low))
    return (height - h) // 2, (width - w) // 2, h, w


def _appearance(x: Tensor, generator: torch.Generator, config: ViewConfig2D) -> Tensor:
    """Grayscale, Gaussian blur and colour jitter, each drawn per image."""
    batch, device = x.shape[0], x.device
    luma = torch.tensor(_LUMA, device=device)
    gray = torch.einsum("c,bchw->bhw", luma, x)[:, None].expand_as(x)
    to_gray = torch.rand(batch, generator=generator, device=device) < config.grayscale_probability
    x = torch.where(to_gray[:, None, None, None], gray, x)
    blurred = torch.rand(batch, generator=generator, device=device) < config.blur_probability
    low, high = config.blur_sigma
    sigma = low + (high - low) * torch.rand(batch, 1, generator=generator, device=device)
    x = x.clone()
    x[blurred] = gaussian_blur(x[blurred], sigma[blurred].expand(-1, 2))
    return _color_jitter(x, generator, config)


def _color_jitter(x: Tensor, generator: torch.Generator, config: ViewConfig2D) -> Tensor:
    """torchvision's ColorJitter, as one affine colour map per image.

    Brightness, contrast, saturation and hue are each ``x -> M x + c`` with a 3x3 ``M``
    (contrast's ``c`` uses the image's mean gray level, which follows from its mean
    colour), so the four, in a random order per image, compose into a single map applied
    once; values are clamped to [0, 1] at the end rather than after each step. Hue turns
    colours about the gray axis in YIQ space; like saturation, it leaves gray X-rays as
    they are.
    """
    batch, device = x.shape[0], x.device

    def factors(strength: float) -> Tensor:
        low = max(0.0, 1.0 - strength)
        return low + (1.0 + strength - low) * torch.rand(batch, generator=generator, device=device)

    brightness, contrast, saturation = (
        factors(config.brightness),
        factors(config.contrast),
        factors(config.saturation),
    )
    turn = (2 * torch.rand(batch, generator=generator, device=device) - 1) * config.hue
    order = torch.rand(batch, 4, generator=generator, device=device).argsort(dim=1)

    eye = torch.eye(3, device=device).expand(batch, 3, 3)
    luma = torch.tensor(_LUMA, device=device)
    yiq = torch.tensor(_RGB_TO_YIQ, device=device)
    cos, sin = torch.cos(2 * math.pi * turn), torch.sin(2 * math.pi * turn)
    rotation = torch.zeros(batch, 3, 3, device=device)
    rotation[:, 0, 0], rotation[:, 1, 1], rotation[:, 2, 2] = 1, cos, cos
    rotation[:, 1, 2], rotation[:, 2, 1] = -sin, sin
    matrices = torch.stack(
        [
            brightness[:, None, None] * eye,
            contrast[:, None, None] * eye,
            saturation[:, None, None] * eye + (1 - saturation)[:, None, None] * luma.expand(3, 3),
            torch.linalg.inv(yiq) @ rotation @ yiq,
        ],
        dim=1,
    )

    mean_colour = x.mean(dim=(2, 3))
    linear, offset = eye, torch.zeros(batch, 3, device=device)
    rows = torch.arange(batch, device=device)
    for step in range(4):
        op = order[:, step]
        current_gray = ((linear @ mean_colour[:, :, None]).squeeze(-1) + offset) @ luma
        shift = torch.where(op == 1, (1 - contrast) * current_gray, 0.0)[:, None].expand(-1, 3)
        matrix = matrices[rows, op]
        linear = matrix @ linear
        offset = (matrix @ offset[:, :, None]).squeeze(-1) + shift
    jittered = torch.einsum("bij,bjhw->bihw", linear, x) + offset[:, :, None, None]
    return jittered.clamp_(0.0, 1.0)


def _cutout(x: Tensor, generator: torch.Generator, holes: int, size: int) -> Tensor:
    """Zero ``holes`` squares of side ``size`` per image, centred anywhere (clipped at edges)."""
    if holes == 0:
        return x
    batch, _, height, width = x.shape
    device = x.device
    rows = torch.randint(height, (batch, holes, 1), generator=generator, device=device)
    cols = torch.randint(width, (batch, holes, 1), generator=generator, device=device)
    in_rows = _within(torch.arange(height, device=device), rows, size // 2)
    in_cols = _within(torch.arange(width, device=device), cols, size // 2)
    hit = (in_rows[:, :, :, None] & in_cols[:, :, None, :]).any(dim=1)
    return x.masked_fill(hit[:, None], 0.0)


def _within(positions: Tensor, centres: Tensor, half: int) -> Tensor:
    return (positions >= centres - half) & (positions < centres + half)
