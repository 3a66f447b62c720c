"""Activations kept as recipes: the same gradients and statistics as a plain step, with the
block outputs really released after the forward, and each recipe rebuilt once."""

from __future__ import annotations

import copy
import gc
import weakref
from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from pcrlv2_hub.models.recompute import activations_as_recipes, keep_as_recipe, replayable
from pcrlv2_hub.models.registry import build_model
from pcrlv2_hub.models.unet3d import ConvNormAct3d
from pcrlv2_hub.pretrain.config import SAMPLE_DATA
from pcrlv2_hub.pretrain.crops import SubCropSampler
from pcrlv2_hub.pretrain.dataset import SubCropDataset, corrupt_batch
from pcrlv2_hub.pretrain.losses import draw_levels, pcrlv2_loss
from pcrlv2_hub.pretrain.preparation import prepare_volumes
from pcrlv2_hub.pretrain.views import ViewBatch, ViewConfig3D
from pcrlv2_hub.pretrain.views2d import read_image

VIEWS = ViewConfig3D(global_size=(32, 32, 16), local_size=(8, 8, 8), num_locals=3)


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> ViewBatch:
    """Corrupted views of two sub-crop sets cut from the real chest CT sample."""
    volumes = prepare_volumes(
        SAMPLE_DATA / "chest_ct.nii.gz", cache_dir=tmp_path_factory.mktemp("cache")
    ).volumes
    dataset = SubCropDataset(volumes, SubCropSampler(VIEWS), 2, seed=0)
    batch = default_collate([dataset[0], dataset[1]])
    return corrupt_batch(batch, torch.Generator().manual_seed(0), VIEWS)


def _step(model: nn.Module, views: ViewBatch, recipes: bool, **autocast) -> torch.Tensor:
    levels = draw_levels(torch.Generator().manual_seed(1), 3, VIEWS.num_locals)
    with (
        torch.autocast("cpu", **autocast) if autocast else nullcontext(),
        activations_as_recipes() if recipes else nullcontext(),
    ):
        out = pcrlv2_loss(model, views, levels, beta=0.5)
    out.total.backward()
    return out.total.detach()


@pytest.mark.parametrize(
    "memory_format, autocast",
    [
        (torch.contiguous_format, {}),
        (torch.channels_last_3d, {}),
        (torch.contiguous_format, {"dtype": torch.bfloat16}),
    ],
)
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # torch's flags() says it
def test_recipes_give_the_plain_gradients_and_statistics(views, memory_format, autocast):
    """Bit-identical gradients and BatchNorm statistics. The bf16 case runs without oneDNN:
    on CPUs with bf16 instructions its bf16 weight gradients of the 16- and 32-channel
    convolutions differ from run to run by up to a quarter of their largest value, with or
    without recipes (measured on an AVX-512 Xeon), so no comparison could be exact there."""
    deterministic = torch.backends.mkldnn.flags(enabled=False) if autocast else nullcontext()
    torch.manual_seed(0)
    plain = build_model("pcrlv2_unet3d", widths=(8, 16, 16, 32)).train()
    plain = plain.to(memory_format=memory_format)
    lean = copy.deepcopy(plain)
    with deterministic:
        loss = _step(plain, views, recipes=False, **autocast)
        assert torch.equal(_step(lean, views, recipes=True, **autocast), loss)
    for (name, a), b in zip(plain.named_parameters(), lean.parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(plain.named_buffers(), lean.buffers(), strict=True):
        assert torch.equal(a, b), name  # BatchNorm's running statistics updated once


def test_block_outputs_are_released_after_the_forward(views):
    """Each conv-norm-ReLU output is gone once the forward ends, except those that a
    transposed convolution's recipe reads (eight times smaller than what it rebuilds)."""
    model = build_model("pcrlv2_unet3d", widths=(8, 16, 16, 32)).train()
    relu_blocks = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, ConvNormAct3d) and isinstance(m.activation, nn.ReLU)
    }
    upsampled = {"down_tr512.ops.1", "up_tr256.ops.1", "up_tr128.ops.1"}

    def alive_outputs(recipes: bool) -> set[str]:
        outputs: list[tuple[str, weakref.ref]] = []
        handles = [
            block.register_forward_hook(
                lambda _m, _i, out, name=name: outputs.append((name, weakref.ref(out)))
            )
            for name, block in relu_blocks.items()
        ]
        with activations_as_recipes() if recipes else nullcontext():
            out = pcrlv2_loss(model, views, draw_levels(torch.Generator(), 3, 3), beta=0.5)
        for handle in handles:
            handle.remove()
        gc.collect()
        alive = {name for name, ref in outputs if ref() is not None}
        out.total.backward()  # the recipes rebuild what backward needs
        assert all(p.grad is not None for p in model.down_tr64.parameters())
        model.zero_grad()
        return alive

    assert alive_outputs(recipes=False) == set(relu_blocks)  # autograd keeps them all
    assert alive_outputs(recipes=True) == upsampled


def test_a_tensor_saved_twice_is_rebuilt_once():
    x = torch.randn(5, requires_grad=True)
    rebuilds = []

    def double() -> torch.Tensor:
        rebuilds.append(1)
        return x.detach() * 2

    with activations_as_recipes():
        y = x * 2
        keep_as_recipe(y, double)
        loss = (y * y).sum() + y.sin().sum()  # mul saves y twice, sin once
    loss.backward()
    assert len(rebuilds) == 1
    assert torch.allclose(x.grad, 8 * x.detach() + 2 * torch.cos(2 * x.detach()))


def test_outside_the_context_nothing_is_kept_as_a_recipe():
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    keep_as_recipe(y, lambda: pytest.fail("a recipe was used outside the context"))
    (y * y).sum().backward()
    assert torch.equal(x.grad, 8 * x.detach())


def test_sync_batchnorm_is_not_replayed_while_training():
    sync = nn.SyncBatchNorm(4)
    assert not replayable(sync.train())
    assert replayable(sync.eval())
    assert replayable(nn.BatchNorm3d(4).train())


def test_the_2d_decoder_gives_the_plain_gradients():
    """The 2D network's decoder blocks keep their outputs as recipes too."""
    torch.manual_seed(0)
    plain = build_model("pcrlv2_unet2d", decoder_widths=[16, 8, 8, 8, 8]).train()
    lean = copy.deepcopy(plain)
    pngs = sorted((SAMPLE_DATA / "chestxray").glob("*/*.png"))[:2]  # real 64x64 X-rays
    images = torch.stack([read_image(path) for path in pngs]).float().div(255)
    grads = []
    for model, recipes in ((plain, False), (lean, True)):
        with activations_as_recipes() if recipes else nullcontext():
            out = model(images, supervise=[4])
        (out.restoration.square().mean() + out.levels[4].restoration.abs().mean()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
