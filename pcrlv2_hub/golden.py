"""Golden outputs: a fixed input and summary numbers that pin down what a weights file computes.

A sha256 proves the bytes are right; the golden check proves that this package, on this
machine, turns those bytes into the same network. The input is analytic (no random
generator whose stream could change between torch versions) and the summaries are a few
means and standard deviations, compared with a tolerance that absorbs floating-point
differences between CPUs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from .errors import InvalidInputError

INPUT_KIND = "sinusoid"
INPUT_SIZE = {3: (32, 32, 32), 2: (64, 64)}
ATOL = 1e-4
RTOL = 1e-3


def golden_input(shape: tuple[int, ...]) -> Tensor:
    """A smooth (B, C, *spatial) image in [0, 1], identical in every batch item and channel."""
    axes = [torch.linspace(0.0, 1.0, size, dtype=torch.float64) for size in shape[2:]]
    grids = torch.meshgrid(*axes, indexing="ij")
    phase = sum((index + 1) * grid for index, grid in enumerate(grids))
    image = 0.5 + 0.5 * torch.sin(2 * math.pi * phase)
    return image.expand(shape).to(torch.float32).contiguous()


def input_shape(dimension: int, in_channels: int) -> list[int]:
    return [1, in_channels, *INPUT_SIZE[dimension]]


def record(model: nn.Module, dimension: int, in_channels: int) -> dict[str, Any]:
    """The golden entry of a manifest: the input it used and the summary of every output."""
    shape = input_shape(dimension, in_channels)
    return {
        "input": {"kind": INPUT_KIND, "shape": shape},
        "summary": summarize(_run(model, shape)),
        "atol": ATOL,
        "rtol": RTOL,
    }


def compare(model: nn.Module, golden: dict[str, Any]) -> list[str]:
    """Differences between ``model``'s outputs and ``golden`` (an empty list means it matches)."""
    if golden["input"]["kind"] != INPUT_KIND:
        raise InvalidInputError(f"unknown golden input kind {golden['input']['kind']!r}.")
    actual = {item["name"]: item for item in summarize(_run(model, golden["input"]["shape"]))}
    problems = []
    for expected in golden["summary"]:
        got = actual.get(expected["name"])
        if got is None or got["shape"] != expected["shape"]:
            problems.append(f"{expected['name']}: missing or shaped {got and got['shape']}")
            continue
        for stat in ("mean", "std"):
            bound = golden["atol"] + golden["rtol"] * abs(expected[stat])
            if abs(got[stat] - expected[stat]) > bound:
                problems.append(
                    f"{expected['name']}.{stat} = {got[stat]:.6g}, expected {expected[stat]:.6g}"
                )
    return problems


def summarize(output: Any) -> list[dict[str, Any]]:
    """Mean and standard deviation of every tensor in a (nested) network output."""
    return [
        {
            "name": name,
            "shape": list(tensor.shape),
            "mean": float(tensor.double().mean()),
            "std": float(tensor.double().std()) if tensor.numel() > 1 else 0.0,
        }
        for name, tensor in _leaves(output, "output")
    ]


def _run(model: nn.Module, shape: list[int]) -> Any:
    parameter = next(model.parameters())
    x = golden_input(tuple(shape)).to(parameter.device, parameter.dtype)
    with torch.no_grad():
        return model.eval()(x)


def _leaves(value: Any, name: str) -> list[tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        return [(name, value)]
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, f"{name}.{key}")]
    if isinstance(value, (list, tuple)):
        return [leaf for i, item in enumerate(value) for leaf in _leaves(item, f"{name}[{i}]")]
    return []
