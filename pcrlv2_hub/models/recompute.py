"""Cheap activations kept for the backward pass as recipes instead of values.

Autograd keeps every tensor a backward formula needs. In the PCRLv2 networks most of that
memory is redundant: a conv-norm-ReLU block keeps the convolution's output (for the
normalisation's gradient) *and* the ReLU's output (for the ReLU's own gradient and for
the next layer's weight gradient), though the second is an elementwise function of the
first; a transposed convolution's output is kept by the convolution after it, though it
is a cheap function of an eight times smaller input.

Inside :func:`activations_as_recipes`, a layer that calls :func:`keep_as_recipe` on an
output has autograd store the recipe (a function and the inputs it reads) in place of the
tensor, and backward reruns the recipe where the tensor is needed. The recipes rerun the
forward's own operations on the same inputs, so gradients are those of the plain step,
for about half the activation memory and some elementwise work in backward. Outside the
context manager, :func:`keep_as_recipe` does nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Recipe:
    """How to rebuild one tensor, shared by all of its saves: rebuilt at the first unpack
    and kept until the last, so a tensor that several backward formulas read (a ReLU's
    and the next convolution's) is rebuilt once."""

    def __init__(self, rebuild: Callable[[], Tensor], device_type: str):
        self._rebuild = rebuild
        # backward runs outside the forward's autocast region: rebuild under the same one
        self._autocast = torch.autocast(
            device_type,
            dtype=torch.get_autocast_dtype(device_type),
            enabled=torch.is_autocast_enabled(device_type),
        )
        self._saves = 0
        self._value: Tensor | None = None

    def packed(self) -> _Recipe:
        self._saves += 1
        return self

    def unpacked(self) -> Tensor:
        value = self._value
        if value is None:
            with self._autocast:
                value = self._rebuild()
        self._saves -= 1
        self._value = value if self._saves > 0 else None
        return value


_recipes: ContextVar[dict[int, tuple[weakref.ref, _Recipe]] | None] = ContextVar(
    "pcrlv2_recipes", default=None
)


@contextmanager
def activations_as_recipes() -> Iterator[None]:
    """Forward passes run inside store the registered activations as recipes.

    Only the forward needs to run inside; backward may run anywhere later.
    """
    recipes: dict[int, tuple[weakref.ref, _Recipe]] = {}

    def pack(tensor: Tensor) -> Tensor | _Recipe:
        entry = recipes.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1].packed()
        return tensor

    def unpack(saved: Tensor | _Recipe) -> Tensor:
        return saved.unpacked() if isinstance(saved, _Recipe) else saved

    token = _recipes.set(recipes)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _recipes.reset(token)


def keep_as_recipe(tensor: Tensor, rebuild: Callable[[], Tensor]) -> None:
    """From now on, wherever autograd saves ``tensor``, save ``rebuild`` instead.

    ``rebuild()`` must give ``tensor``'s final values (also after in-place changes made
    to it later in the forward) without side effects.
    """
    recipes = _recipes.get()
    if recipes is not None and torch.is_grad_enabled():
        recipes[id(tensor)] = (weakref.ref(tensor), _Recipe(rebuild, tensor.device.type))


def replayable(norm: nn.Module) -> bool:
    """Whether :func:`replay_norm` gives ``norm``'s output: not for a training
    SyncBatchNorm, whose statistics come from every process."""
    return not (isinstance(norm, nn.SyncBatchNorm) and norm.training)


def replay_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(x)`` once more, without updating running statistics (training BatchNorm
    normalises with the batch's statistics, recomputed here from ``x``)."""
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training:
        return F.batch_norm(x, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)
    return norm(x)


def norm_relu(norm: nn.Module, x: Tensor) -> Tensor:
    """``relu(norm(x))``, its output kept as a recipe (``x`` is kept for the norm anyway)."""
    out = norm(x)
    if replayable(norm):
        keep_as_recipe(out, lambda: replay_norm(norm, x).relu_())
    return out.relu_()  # in place: ``out`` itself becomes the value the recipe gives
