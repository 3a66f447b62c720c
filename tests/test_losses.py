"""The PCRLv2 loss terms: their values on known cases, the stop-gradient, the schedule,
and that a step computes only what the terms use."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from pcrlv2_hub.errors import InvalidInputError
from pcrlv2_hub.models.outputs import PyramidLevel
from pcrlv2_hub.models.registry import build_model
from pcrlv2_hub.pretrain.losses import (
    comparison_loss,
    deep_supervision_weight,
    draw_levels,
    local_comparison_loss,
    multiscale_restoration_loss,
    pcrlv2_loss,
    restoration_loss,
)
from pcrlv2_hub.pretrain.views import ViewBatch

TERMS = {"restoration", "multiscale_restoration", "comparison", "local_comparison"}


def _level(vectors: torch.Tensor) -> PyramidLevel:
    """A level whose predictor is perfect: p equals z."""
    return PyramidLevel(vectors, vectors, None)


def test_identical_views_give_minus_one():
    z = torch.randn(4, 16)
    assert comparison_loss(_level(z), _level(z)).item() == pytest.approx(-1.0, abs=1e-6)
    assert comparison_loss(_level(z), _level(-z)).item() == pytest.approx(1.0, abs=1e-6)
    # cosine: invariant to the scale of either view
    assert comparison_loss(_level(z), _level(3 * z)).item() == pytest.approx(-1.0, abs=1e-6)


def test_perfect_restoration_gives_zero():
    target = torch.rand(2, 1, 16, 16, 8)
    assert restoration_loss(target.clone(), target).item() == 0.0
    assert multiscale_restoration_loss(target.clone(), target, beta=0.7).item() == 0.0
    shifted = target + 0.5
    assert restoration_loss(shifted, target).item() == pytest.approx(0.25)
    assert multiscale_restoration_loss(shifted, target, 0.5).item() == pytest.approx(0.125)


def test_stop_gradient_stops_gradients_to_projections():
    p1, z1, p2, z2 = (torch.randn(3, 8, requires_grad=True) for _ in range(4))
    comparison_loss(PyramidLevel(z1, p1, None), PyramidLevel(z2, p2, None)).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def test_comparison_matches_the_formula():
    p1, z1, p2, z2 = (torch.randn(5, 8) for _ in range(4))
    expected = -0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean())
    got = comparison_loss(PyramidLevel(z1, p1, None), PyramidLevel(z2, p2, None))
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_deep_supervision_weight_is_a_half_cosine():
    epochs = 240
    assert deep_supervision_weight(0, epochs) == 1.0
    assert deep_supervision_weight(120, epochs) == pytest.approx(0.5)
    assert deep_supervision_weight(240, epochs) == pytest.approx(0.0, abs=1e-12)
    assert deep_supervision_weight(60, epochs) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    weights = [deep_supervision_weight(e, epochs) for e in range(epochs + 1)]
    assert all(a > b for a, b in itertools.pairwise(weights))


def test_local_term_averages_over_two_times_the_locals():
    batch, channels, num_locals, num_levels = 3, 8, 6, 3
    globals_z = [torch.randn(batch, channels) for _ in range(num_levels)]
    first = [_level(z) for z in globals_z]
    second = [_level(z) for z in globals_z]
    # local 0 equals the globals (each pair -1), the others are their negatives (+1)
    local_levels = [_level(torch.cat([z] + [-z] * (num_locals - 1))) for z in globals_z]
    levels = [(0, 2)] + [(1, 1)] * (num_locals - 1)
    got = local_comparison_loss((first, second), local_levels, levels).item()
    assert got == pytest.approx((2 * -1 + 2 * (num_locals - 1) * 1) / (2 * num_locals), abs=1e-6)


def test_local_term_pairs_each_local_with_its_own_rows_and_level():
    torch.manual_seed(0)
    batch, num_locals = 2, 3

    def level(rows: int) -> PyramidLevel:
        return PyramidLevel(torch.randn(rows, 4), torch.randn(rows, 4), None)

    views = [[level(batch) for _ in range(3)] for _ in range(2)]
    locals_ = [level(num_locals * batch) for _ in range(3)]
    levels = [(0, 1), (2, 0), (1, 2)]
    expected = []
    for i, per_global in enumerate(levels):
        rows = slice(i * batch, (i + 1) * batch)
        for g, k in enumerate(per_global):
            local = PyramidLevel(locals_[k].projection[rows], locals_[k].prediction[rows], None)
            expected.append(comparison_loss(views[g][k], local))
    got = local_comparison_loss(views, locals_, levels)
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-6)
    with pytest.raises(InvalidInputError, match="view-major"):
        local_comparison_loss(views, locals_, levels[:2])


def test_level_draws_replay_from_the_generator():
    draws = [draw_levels(torch.Generator().manual_seed(7), 3, 6) for _ in range(2)]
    assert draws[0] == draws[1]
    assert len(draws[0].local_levels) == 6
    many = [draw_levels(torch.Generator().manual_seed(s), 3, 6) for s in range(20)]
    assert {d.level for d in many} == {0, 1, 2}


def _views(batch: int = 2, num_locals: int = 2) -> ViewBatch:
    generator = torch.Generator().manual_seed(0)

    def volume(*shape):
        return torch.rand(*shape, generator=generator)

    return ViewBatch(
        volume(batch, 1, 16, 16, 8),
        volume(batch, 1, 16, 16, 8),
        volume(batch, 1, 16, 16, 8),
        volume(batch, 1, 16, 16, 8),
        volume(num_locals * batch, 1, 8, 8, 8),
    )


def _count_calls(model):
    """Count the calls of each output head with forward hooks on the real modules."""
    calls = {"out_tr": 0, **{i: 0 for i in range(3)}}
    model.out_tr.register_forward_hook(lambda *_: calls.__setitem__("out_tr", calls["out_tr"] + 1))
    for index, stage in enumerate(model.decoder_stages()):
        stage.deep_supervision_head.register_forward_hook(
            lambda *_, i=index: calls.__setitem__(i, calls[i] + 1)
        )
    return calls


@pytest.mark.parametrize("objective", ["full", "restoration", "comparison"])
def test_pcrlv2_loss_computes_only_what_its_terms_use(objective):
    torch.manual_seed(0)
    model = build_model("pcrlv2_unet3d", widths=(4, 8, 8, 16)).train()
    calls = _count_calls(model)
    levels = draw_levels(torch.Generator().manual_seed(3), 3, 2)
    out = pcrlv2_loss(model, _views(), levels, beta=0.5, objective=objective)
    assert set(out.terms) == TERMS
    assert out.total.item() == pytest.approx(sum(t.item() for t in out.terms.values()), rel=1e-6)
    restores = objective != "comparison"
    compares = objective != "restoration"
    assert calls["out_tr"] == int(restores)  # only x1's final restoration
    assert [calls[i] for i in range(3)] == [int(restores and i == levels.level) for i in range(3)]
    assert (out.terms["restoration"].item() > 0) == restores
    assert (out.terms["comparison"].item() != 0) == compares
    assert (out.restoration is None) == (not restores)
    out.total.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert ("out_tr.final_conv.weight" in grads) == restores
    assert ("up_tr64.predictor_head.0.weight" in grads) == compares


def test_unknown_objective_is_refused():
    model = build_model("pcrlv2_unet3d", widths=(4, 8, 8, 16))
    with pytest.raises(InvalidInputError, match="objective"):
        pcrlv2_loss(model, _views(), draw_levels(torch.Generator(), 3, 2), 1.0, "contrastive")
