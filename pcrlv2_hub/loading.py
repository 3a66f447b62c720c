"""Putting a state dict into a network: key normalisation, a readable strict check, no copies.

The network is built on the meta device (no storage, no random initialisation) and the
loaded tensors are assigned to it, so the weights exist once in memory and loading costs
little more than reading the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from .errors import IncompatibleWeightsError

KNOWN_PREFIXES = ("module.", "_orig_mod.")
"""Wrappers that rename every key: DataParallel/DistributedDataParallel and torch.compile."""

_SHOWN = 8


def normalise_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip the prefixes that wrappers add (``module.``, ``_orig_mod.``), however nested."""
    normalised = {}
    for key, tensor in state_dict.items():
        while key.startswith(KNOWN_PREFIXES):
            key = key.split(".", 1)[1]
        normalised[key] = tensor
    return normalised


def build_loaded(
    factory: Callable[[], nn.Module],
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    description: str = "the network",
) -> nn.Module:
    """Build ``factory()`` holding ``state_dict``, in eval mode.

    Strict loads build on the meta device and assign the tensors (one copy of the weights).
    ``strict=False`` builds a real network so that tensors absent from the file keep their
    initial values; mis-shaped tensors are an error either way.
    """
    state_dict = normalise_keys(state_dict)
    if strict:
        with torch.device("meta"):
            model = factory()
    else:
        model = factory()
    check_compatible(model, state_dict, strict=strict, description=description)
    model.load_state_dict(state_dict, strict=strict, assign=strict)
    unset = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:  # non-persistent buffers are not in any state dict
        raise IncompatibleWeightsError(
            f"{description} keeps tensors no file can fill ({', '.join(unset[:_SHOWN])}); "
            "load it with strict=False."
        )
    return model.eval()


def check_compatible(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, strict: bool, description: str
) -> None:
    """Raise :class:`IncompatibleWeightsError` listing every key that does not fit.

    With ``strict=False`` missing and unexpected keys are allowed but still reported as a
    warning: a partial load is never silent.
    """
    expected = model.state_dict()
    misshaped = [
        f"{key}: file {tuple(state_dict[key].shape)}, network {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    partial = [
        _section("missing from the file", sorted(set(expected) - set(state_dict))),
        _section("not in the network", sorted(set(state_dict) - set(expected))),
    ]
    report = [_section("wrong shape", misshaped), *(partial if strict else [])]
    if any(report):
        raise IncompatibleWeightsError(
            f"the weights do not fit {description}:\n"
            + "".join(report)
            + "Check that the file was made for this architecture and these arguments"
            + (" (or pass strict=False to load only the tensors that fit)." if strict else ".")
        )
    if any(partial):
        warnings.warn(
            f"partial load into {description}:\n" + "".join(partial), UserWarning, stacklevel=3
        )


def _section(title: str, keys: list[str]) -> str:
    """An indented block of at most a few keys; empty when there are none."""
    if not keys:
        return ""
    more = [f"... and {len(keys) - _SHOWN} more"] if len(keys) > _SHOWN else []
    lines = "".join(f"    {line}\n" for line in [*keys[:_SHOWN], *more])
    return f"  {len(keys)} {title}:\n{lines}"
