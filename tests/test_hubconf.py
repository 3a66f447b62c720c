"""torch.hub.load(repo_dir, ..., source="local") reaches every zoo entry and the loaders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from conftest import SMALL_WIDTHS, Published

from pcrlv2_hub import list_models
from pcrlv2_hub.models.unet3d import PCRLv2UNet3D

REPO_DIR = str(Path(__file__).resolve().parents[1])


def import_hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO_DIR) / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_zoo_model_has_a_documented_entry_point():
    hubconf = import_hubconf()
    for name in list_models():
        entry = getattr(hubconf, name)
        assert entry.__doc__ and "Input" in entry.__doc__
    assert {"torch", "timm", "huggingface_hub", "safetensors"} <= set(hubconf.dependencies)


def test_local_torch_hub_load_builds_the_network():
    model = torch.hub.load(
        REPO_DIR, "unet3d_luna", source="local", pretrained=False, widths=SMALL_WIDTHS
    )
    assert isinstance(model, PCRLv2UNet3D) and not model.training
    assert model.widths == SMALL_WIDTHS


def test_local_torch_hub_loaders_take_weights(published: Published):
    weights = str(published.release.weights_path)
    model = torch.hub.load(REPO_DIR, "load", source="local", weights=weights)
    expected = published.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    encoder = torch.hub.load(REPO_DIR, "load_encoder", "tiny3d", source="local", pool="avg")
    assert encoder(torch.rand(1, 1, 16, 16, 16)).shape == (1, SMALL_WIDTHS[-1])
