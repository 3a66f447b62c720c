"""The public entry points: ``load``, ``load_encoder``, ``list_models``, ``model_info``.

Every route (zoo name, ``hf-hub:`` name, local safetensors, official ``.pt``) ends in the
same three facts: an architecture, its arguments and, when pretrained, a verified state
dict. The networks are then built once, with the weights assigned rather than copied.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from .convert import is_pickle_path, read_official_checkpoint
from .errors import IncompatibleWeightsError, InvalidInputError, WeightsFormatError
from .hub import HF_HUB_PREFIX, fetch_hf_hub_weights, open_zoo_weights
from .loading import build_loaded
from .manifest import get_entry, list_names
from .models.encoders import (
    PooledEncoder,
    adapt_in_channels,
    build_encoder,
    encoder_state_dict,
)
from .models.registry import build_model
from .models.segmentation import build_segmentation
from .weights_file import open_weights, read_metadata

Device = str | torch.device | None


def _already_verified() -> None:
    """The tensors were checked before they were returned (or there are none)."""


@dataclass(frozen=True)
class _Resolved:
    """What to build, and with which tensors (None: random initialisation)."""

    architecture: str
    arguments: dict[str, Any]
    state_dict: dict[str, torch.Tensor] | None
    verify: Callable[[], None] = _already_verified
    """Waits for the check of ``state_dict`` that runs while the network is built: call
    it before returning anything made from the tensors."""

    @contextmanager
    def checked(self) -> Iterator[None]:
        """Build inside this block: leaving it, even by an error (which a damaged file
        explains better), waits for the check of the tensors and raises if it failed."""
        try:
            yield
        finally:
            self.verify()

    def describe(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        return f"{self.architecture}({arguments})"


def load(
    name: str | None = None,
    pretrained: bool = True,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: Device = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    **overrides: Any,
) -> nn.Module:
    """A PCRLv2 network in eval mode, with verified pretrained weights.

    ``name``: a zoo name or alias (``list_models()``) or ``hf-hub:org/repo@revision``.
    ``weights``: a local ``.safetensors`` file, or an official ``.pt`` (read safely).
    ``revision`` overrides the pinned Hub revision; ``cache_dir`` the huggingface_hub
    cache. ``pretrained=False`` builds the same network randomly initialised.
    ``overrides`` change constructor arguments (e.g. ``widths``); with pretrained weights
    they must still fit the tensors. ``strict=False`` loads what fits and warns about the rest.
    """
    resolved = _resolve(name, pretrained, weights, revision, cache_dir, device, overrides)
    factory = partial(build_model, resolved.architecture, **resolved.arguments)
    if resolved.state_dict is None:
        return _place(factory(), device, dtype)
    with resolved.checked():
        model = build_loaded(
            factory, resolved.state_dict, strict=strict, description=resolved.describe()
        )
    return _place(model, device, dtype)


def load_encoder(
    name: str | None = None,
    pretrained: bool = True,
    *,
    weights: str | os.PathLike | None = None,
    in_channels: int | None = None,
    pool: str | None = None,
    segmentation_classes: int | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: Device = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    **overrides: Any,
) -> nn.Module:
    """The pretrained encoder of a network, for transfer learning (eval mode).

    By default ``forward(x)`` returns the feature maps fine to coarse, and
    ``feature_info.channels()`` / ``.reduction()`` give their channels and strides.

    - ``in_channels=N`` adapts the stem to N input channels: the pretrained kernel is
      summed over its channels and spread evenly over the N new ones, so N copies of one
      image give the features the original stem gives that image (1-channel CT -> 4-channel
      MRI; 3-channel 2D stem -> grayscale).
    - ``pool="avg"|"max"`` returns pooled (B, C) vectors instead (``num_features`` = C).
    - ``segmentation_classes=K`` returns the encoder inside a U-Net *with* skip connections
      and K output channels (the authors' advice for segmentation); its
      ``transfer_report`` says which tensors came from the pretrained weights.
    Other options are those of :func:`load`.
    """
    if pool is not None and segmentation_classes is not None:
        raise InvalidInputError("choose pool (classification) or segmentation_classes, not both.")
    resolved = _resolve(name, pretrained, weights, revision, cache_dir, device, overrides)
    with resolved.checked():
        state = (
            None
            if resolved.state_dict is None
            else encoder_state_dict(resolved.architecture, resolved.state_dict)
        )
        if segmentation_classes is not None:
            model, report = build_segmentation(
                resolved.architecture, resolved.arguments, segmentation_classes, state
            )
            model.transfer_report = report
        else:
            factory = partial(build_encoder, resolved.architecture, resolved.arguments)
            description = f"the encoder of {resolved.describe()}"
            model = (
                factory()
                if state is None
                else build_loaded(factory, state, strict=strict, description=description)
            )
    if in_channels is not None:
        adapt_in_channels(model, in_channels)
    if pool is not None:
        model = PooledEncoder(model, pool)
    return _place(model, device, dtype)


def list_models(pattern: str = "*") -> list[str]:
    """Zoo model names matching a shell-style pattern, e.g. ``list_models("*chest*")``."""
    return list_names(pattern)


def model_info(name: str) -> dict[str, Any]:
    """Everything the manifest says about a zoo model (input spec, licence, weights, paper...)."""
    return copy.deepcopy(get_entry(name).info)


def _resolve(
    name: str | None,
    pretrained: bool,
    weights: str | os.PathLike | None,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    device: Device,
    overrides: dict[str, Any],
) -> _Resolved:
    """Architecture, arguments (with ``overrides``) and the tensors a request names."""
    entry = get_entry(name) if name and not name.startswith(HF_HUB_PREFIX) else None
    if weights is not None:
        if name is not None and entry is None:
            raise InvalidInputError("give either an hf-hub: name or weights=..., not both.")
        resolved = _read_local(weights, device, pretrained)
        if entry is not None and resolved.architecture != entry.architecture:
            raise IncompatibleWeightsError(
                f"{weights} holds a {resolved.architecture} network but {entry.name} is a "
                f"{entry.architecture}; drop the name to load the file as it is."
            )
    elif name is None:
        raise InvalidInputError(
            "name a model (list_models() shows the zoo; or hf-hub:org/repo@revision) "
            "or pass weights='path/to/model.safetensors'."
        )
    elif entry is not None:
        resolved = _Resolved(entry.architecture, dict(entry.arguments), None)
        if pretrained:
            tensors, verify = open_zoo_weights(
                entry, revision=revision, cache_dir=cache_dir, device=device or "cpu"
            )
            resolved = _Resolved(resolved.architecture, resolved.arguments, tensors, verify)
    else:
        path = fetch_hf_hub_weights(name, revision=revision, cache_dir=cache_dir)
        resolved = _read_safetensors(path, device, pretrained)
    return _Resolved(
        resolved.architecture,
        {**resolved.arguments, **overrides},
        resolved.state_dict,
        resolved.verify,
    )


def _read_local(path: str | os.PathLike, device: Device, pretrained: bool) -> _Resolved:
    """A local file's network and, if ``pretrained``, its tensors (else only its header)."""
    if is_pickle_path(path):
        checkpoint = read_official_checkpoint(path)
        state_dict = checkpoint.state_dict if pretrained else None
        return _Resolved(checkpoint.architecture, checkpoint.arguments, state_dict)
    return _read_safetensors(path, device, pretrained)


def _read_safetensors(path: str | os.PathLike, device: Device, pretrained: bool) -> _Resolved:
    """A self-describing file's network; its tensors, checked against its own digest while
    the network is built, if ``pretrained``."""
    if not pretrained:
        metadata = read_metadata(path)
        return _Resolved(_described(metadata.architecture, path), metadata.arguments, None)
    opened = open_weights(path, device=device or "cpu")
    metadata = opened.metadata
    return _Resolved(
        _described(metadata.architecture, path), metadata.arguments, opened.tensors, opened.verify
    )


def _described(architecture: str | None, path: str | os.PathLike) -> str:
    if architecture is None:
        raise WeightsFormatError(
            f"{path} has no pcrlv2_hub metadata saying which network it holds; write it with "
            "pcrlv2_hub (`pcrlv2-hub convert` or `export`), or load it into a network you "
            "build yourself."
        )
    return architecture


def _place(model: nn.Module, device: Device, dtype: torch.dtype | None) -> nn.Module:
    return model.to(device=device, dtype=dtype).eval()
