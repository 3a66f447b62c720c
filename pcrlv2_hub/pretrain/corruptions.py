"""The paper's 3D corruptions, batched on the training device and driven by a torch.Generator.

Per view, as in the authors' torchio pipeline: a random flip and a small random affine
(the spatial part, shared by the input and its restoration target), then Gaussian blur,
Gaussian noise and a gamma curve, patch swapping on the global views only, and finally
z-normalisation of the inputs. Every sample draws its own parameters, and the batch goes
through each step as one tensor operation (on the CPU, a chunk of it at a time), on the
CPU or a GPU alike; the same generator state gives the same corruptions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .views import ViewBatch, ViewConfig3D

_CPU_CHUNK_VOXELS = 1 << 20


def corrupt_views_3d(
    globals_: Tensor, locals_: Tensor, generator: torch.Generator, config: ViewConfig3D
) -> ViewBatch:
    """Corrupt a batch of clean crops on ``generator.device``.

    ``globals_``: ``(B, 2, C, *global_size)`` and ``locals_``: ``(B, L, C, *local_size)``,
    values in [0, 1], as :class:`~pcrlv2_hub.pretrain.dataset.SubCropDataset` batches them.
    """
    device = generator.device
    views = globals_.to(device, torch.float32, non_blocking=True)
    local_views = locals_.to(device, torch.float32, non_blocking=True)
    targets, inputs = _corrupt(views, generator, config, swap=True)
    _, local_inputs = _corrupt(local_views, generator, config, swap=False)
    inputs1, inputs2 = inputs.chunk(2)
    targets1, targets2 = targets.chunk(2)
    return ViewBatch(inputs1, inputs2, targets1, targets2, local_inputs)


def random_flip_affine(x: Tensor, generator: torch.Generator, config: ViewConfig3D) -> Tensor:
    """Per sample: flips along ``config.flip_axes``, then scaling and rotation about the centre.

    torchio's ``RandomFlip()`` and ``RandomAffine()`` defaults: linear interpolation,
    rotation and scale drawn per axis, and the sample's minimum filling what comes from
    outside. All three are one matrix per sample, so a single trilinear resampling does them.
    """
    batch, spatial = x.shape[0], x.shape[2:]
    flips = torch.ones(batch, 3, device=x.device)
    for axis in config.flip_axes:
        flipped = torch.rand(batch, generator=generator, device=x.device) < config.flip_probability
        flips[:, axis] = torch.where(flipped, -1.0, 1.0)
    scales = _uniform(generator, (batch, 3), config.scale_range)
    degrees = config.rotation_degrees
    angles = _uniform(generator, (batch, 3), (-degrees, degrees)) * (math.pi / 180)
    # output -> input map in centred voxel units: flip . scale^-1 . rotation^T
    inverse = (flips / scales)[:, :, None] * _rotations(angles).transpose(1, 2)
    minimum = x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
    return _sample_trilinear(x - minimum, _source_positions(inverse, spatial)).add_(minimum)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur ``x`` (B, C, *spatial) with a per-sample std per axis, ``sigma`` (B, ndim).

    Separable: along each axis, a product with an (n x n) Gaussian matrix per sample,
    which is fast on small crops on any device. Rows are normalised, so near the border
    a voxel averages over the voxels that exist (no padding); a std of 0 changes nothing.
    """
    batch, spatial = x.shape[0], x.shape[2:]
    for axis, n in enumerate(spatial):
        position = torch.arange(n, dtype=x.dtype, device=x.device)
        distance = position[:, None] - position[None, :]
        std = sigma[:, axis].clamp_min(1e-3)[:, None, None]
        weights = torch.exp(-0.5 * (distance / std) ** 2)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        before, after = math.prod(x.shape[1 : axis + 2]), math.prod(spatial[axis + 1 :])
        if after == 1:  # the last axis: rows times the transposed matrix, one product
            x = (x.reshape(batch, before, n) @ weights.transpose(1, 2)).view_as(x)
        else:
            x = (weights[:, None] @ x.reshape(batch, before, n, after)).view_as(x)
    return x


def random_swap(
    x: Tensor, generator: torch.Generator, patch: tuple[int, ...], count: int
) -> Tensor:
    """Swap ``count`` pairs of ``patch``-sized blocks inside each sample (torchio's RandomSwap).

    The blocks are distinct cells of a grid shifted by a random offset per sample, so no
    two overlap and all swaps are one gather and one scatter.
    """
    batch, channels, spatial = x.shape[0], x.shape[1], x.shape[2:]
    cells = [(n - p + 1) // p for n, p in zip(spatial, patch, strict=True)]
    count = min(count, math.prod(cells) // 2)
    if count == 0:
        return x
    draw = torch.rand(batch, math.prod(cells), generator=generator, device=x.device)
    chosen = torch.unravel_index(draw.topk(2 * count, dim=1).indices, cells)
    flat = torch.zeros((), dtype=torch.long, device=x.device)
    for axis, (cell, p) in enumerate(zip(chosen, patch, strict=True)):
        offset = torch.randint(p, (batch, 1), generator=generator, device=x.device)
        start = (offset + cell * p).view(batch, 2 * count, *[1] * len(spatial))
        within = torch.arange(p, device=x.device).view(
            [p if a == axis else 1 for a in range(len(spatial))]
        )
        flat = flat + (start + within) * math.prod(spatial[axis + 1 :])
    flat = flat.view(batch, 1, -1).expand(-1, channels, -1)  # blocks a..., then blocks b...
    voxels = x.reshape(batch, channels, -1)
    moved = voxels.gather(2, flat).view(batch, channels, 2, -1).flip(2)  # b's values, then a's
    return voxels.clone().scatter_(2, flat, moved.reshape(batch, channels, -1)).view_as(x)


def z_normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Zero mean and unit variance per sample (torchio's ZNormalization)."""
    dims = tuple(range(1, x.ndim))
    centred = x - x.mean(dim=dims, keepdim=True)
    rms = torch.linalg.vector_norm(centred, dim=dims, keepdim=True) / math.sqrt(x[0].numel())
    return centred.div_(rms.clamp_min_(eps))


def _corrupt(
    views: Tensor, generator: torch.Generator, config: ViewConfig3D, swap: bool
) -> tuple[Tensor, Tensor]:
    """(targets, inputs): spatially transformed views, and those corrupted and z-normalised.

    ``views`` (B, V, C, ...) come out view-major, (V * B, C, ...). On the CPU, whole
    samples go through in chunks of about a million voxels, each written to its rows of
    the results: fresh memory for larger tensors costs more than the arithmetic (page
    faults), chunks stay in cache, and no extra pass over the batch reorders it.
    """
    batch = len(views)
    on_cpu = views.device.type == "cpu"
    chunk = max(1, _CPU_CHUNK_VOXELS // views[0].numel()) if on_cpu else batch
    targets = views.new_empty(views.transpose(0, 1).shape)
    inputs = torch.empty_like(targets)
    for start, part in zip(range(0, batch, chunk), views.split(chunk), strict=True):
        rows = slice(start, start + len(part))
        target = random_flip_affine(part.flatten(0, 1), generator, config)
        targets[:, rows] = target.reshape(part.shape).transpose(0, 1)
        corrupted = z_normalise(_intensity(target, generator, config, swap))
        inputs[:, rows] = corrupted.reshape(part.shape).transpose(0, 1)
    return targets.flatten(0, 1), inputs.flatten(0, 1)


def _intensity(x: Tensor, generator: torch.Generator, config: ViewConfig3D, swap: bool) -> Tensor:
    """Blur, noise and gamma (sign-preserving, as torchio does once noise made values < 0).

    After the blur, which makes a new tensor, the steps work in place: on large batches,
    fresh memory costs more than the arithmetic.
    """
    batch, ndim = x.shape[0], x.ndim - 2
    x = gaussian_blur(x, _uniform(generator, (batch, ndim), config.blur_sigma))
    std = _uniform(generator, (batch,), config.noise_std).view(-1, *[1] * (x.ndim - 1))
    x.add_(torch.randn(x.shape, generator=generator, device=x.device).mul_(std))
    gamma = _uniform(generator, (batch,), config.log_gamma).exp().view_as(std)
    x = x.abs().log_().mul_(gamma).exp_().copysign_(x)
    if swap:
        x = random_swap(x, generator, config.swap_patch, config.swap_count)
    return x


def _uniform(
    generator: torch.Generator, shape: tuple[int, ...], bounds: tuple[float, float]
) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def _rotations(angles: Tensor) -> Tensor:
    """Rotation matrices (B, 3, 3) from angles (B, 3) about the x, y and z axes."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def about(axis: int) -> Tensor:
        c, s = cos[:, axis], sin[:, axis]
        rows = {
            0: [one, zero, zero, zero, c, -s, zero, s, c],
            1: [c, zero, s, zero, one, zero, -s, zero, c],
            2: [c, -s, zero, s, c, zero, zero, zero, one],
        }[axis]
        return torch.stack(rows, dim=1).view(-1, 3, 3)

    return about(2) @ about(1) @ about(0)


def _source_positions(inverse: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Where each output voxel reads, in input voxel units: ``(B, 3, *spatial)``.

    The map turns about the centre c, source = c + inverse (p - c). Each axis adds a
    (B, 3, n) term, and one broadcast sum makes the positions of the whole volume.
    """
    centre = torch.tensor(
        [(n - 1) / 2 for n in spatial], dtype=inverse.dtype, device=inverse.device
    )
    positions = centre.view(1, 3, *[1] * len(spatial))
    for axis, n in enumerate(spatial):
        offsets = torch.arange(n, dtype=inverse.dtype, device=inverse.device) - centre[axis]
        shape = [len(inverse), 3] + [n if a == axis else 1 for a in range(len(spatial))]
        positions = positions + (inverse[:, :, axis, None] * offsets).view(shape)
    return positions


def _sample_trilinear(x: Tensor, positions: Tensor) -> Tensor:
    """``x`` (B, C, X, Y, Z) read at voxel ``positions`` (B, 3, ...), trilinear, zero outside.

    The values of 3D ``grid_sample`` (zeros padding), obtained from its 2D kernel: on the
    CPU that one is vectorised and the 3D one a scalar loop, 9x slower per point. The X
    slices are stacked into one tall image, a zero row below each, and neighbouring slices
    are paired as two channels, so one bilinear read in (Y, Z) at the pair holding
    floor(x) gives both slices, and a lerp along X finishes. float32 coordinates over the
    tall image place rows to about 1e-4 voxel for 64x64x32 views (more for taller ones),
    far below what an augmentation notices.
    """
    batch, channels, nx, ny, nz = x.shape
    first = positions[:, 0].floor()
    weight = positions[:, 0] - first
    # pair k holds slices k - 2 and k - 1: floor(x) in [-2, nx] reads zeros outside the volume
    pairs = x.new_zeros(batch, 2, channels, nx + 3, ny + 1, nz)
    pairs[:, 0, :, 2 : nx + 2, :ny] = x
    pairs[:, 1, :, 1 : nx + 1, :ny] = x
    height = (nx + 3) * (ny + 1)
    # a row beyond its slice reads a zero row: its own below it, or the previous pair's above
    row = first.clamp_(-2, nx).add_(2).mul_(ny + 1).add_(positions[:, 1].clamp(-1, ny))
    # grid_sample's x (along Z) and y (the row) as planes, passed as a (B, 1, N, 2) view
    grid = torch.stack([_grid_units(positions[:, 2], nz), _grid_units(row, height)], dim=1)
    image = pairs.view(batch, 2 * channels, height, nz)
    both = F.grid_sample(image, grid.view(batch, 2, 1, -1).movedim(1, -1), align_corners=False)
    both = both.view(batch, 2, channels, *positions.shape[2:])
    return torch.lerp(both[:, 0], both[:, 1], weight[:, None])


def _grid_units(position: Tensor, size: int) -> Tensor:
    """Voxel positions along an axis of ``size`` voxels in ``grid_sample``'s [-1, 1] units."""
    return position.mul(2 / size).add_(1 / size - 1)
