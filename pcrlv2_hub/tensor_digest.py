"""A digest of tensors, recorded in every weights file the package writes and checked on read.

A zoo file is checked against its manifest sha256, but a local file (an export, a converted
checkpoint, a file carried into an air-gapped hospital) has nothing to be checked against
unless it carries its own reference. The digest covers what a network is made of: every
tensor's name, dtype, shape and bytes, in name order. It does not depend on how the file
lays the tensors out, so it is computed from a state dict before writing and from the
tensors read back, with no second pass over the file.
"""

from __future__ import annotations

import hashlib

import torch

PREFIX = "sha256:"


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """``sha256:<hex>`` of the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0"
        digest.update(header.encode())
        if tensor.numel():
            data = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)
            digest.update(memoryview(data.numpy()))
    return PREFIX + digest.hexdigest()
