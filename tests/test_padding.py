"""Padding inputs to a multiple of the network stride, and cropping outputs back."""

from __future__ import annotations

import pytest
import torch

from pcrlv2_hub.errors import InvalidInputError
from pcrlv2_hub.models.padding import pad_to_multiple


def test_pads_each_spatial_axis_up_to_the_multiple_and_crops_back_exactly():
    x = torch.randn(2, 3, 13, 16, 17)
    padded, crop = pad_to_multiple(x, 8)
    assert padded.shape == (2, 3, 16, 16, 24)
    assert torch.equal(padded[crop], x)


def test_padding_is_centred_and_filled_with_the_value():
    x = torch.ones(1, 1, 5, 3)
    padded, crop = pad_to_multiple(x, 8, value=-1.0)
    assert crop[2:] == (slice(1, 6), slice(2, 5))  # 3 = 1 before + 2 after; 5 = 2 + 3
    assert padded.sum() == 15 - (64 - 15)


def test_replicate_and_reflect_modes():
    x = torch.arange(4.0).reshape(1, 1, 4)
    assert pad_to_multiple(x, 6, mode="replicate")[0].flatten().tolist() == [0, 0, 1, 2, 3, 3]
    assert pad_to_multiple(x, 6, mode="reflect")[0].flatten().tolist() == [1, 0, 1, 2, 3, 2]


def test_an_input_already_at_a_multiple_is_unchanged():
    x = torch.randn(1, 1, 8, 16, 24)
    padded, crop = pad_to_multiple(x, 8)
    assert torch.equal(padded, x)
    assert torch.equal(padded[crop], x)


@pytest.mark.parametrize(
    ("shape", "kwargs", "message"),
    [
        ((1, 1, 4, 4), {"multiple": 0}, "multiple"),
        ((1, 1, 4, 4), {"multiple": 2.5}, "multiple"),
        ((4, 4), {}, r"\(B, C, \*spatial\)"),
        ((1, 1, 2, 2), {"multiple": 8, "mode": "reflect"}, "mode='constant'"),
        ((1, 1, 2, 2), {"mode": "mirror"}, "mode='constant'"),
    ],
)
def test_bad_arguments_raise_a_clear_error(shape, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        pad_to_multiple(torch.zeros(shape), **kwargs)
