"""PCRLv2's training objective (DESIGN.md section 1), one term per function.

Notation: a forward pass of a view gives, at every decoder level k, the projection z_k
(pooled, normalised features) and the prediction p_k (an MLP of z_k), plus restored
images. ``sg`` is the stop-gradient. With views x1, x2 of one crop pair and N local views:

    total = MSE(r(x1), t1)                                   restoration
          + C_k(x1, x2)                                      comparison at a random level k
          + 1/(2N) sum_i sum_g C_{k_ig}(x_g, local_i)        local-global comparison
          + beta(epoch) * MSE(r_k(x1), t1)                   multi-scale restoration

where C_k(a, b) = -1/2 [cos(p_k(a), sg z_k(b)) + cos(p_k(b), sg z_k(a))].

The forward passes compute only what these terms use: x1 gets its final restoration and
the deep-supervision image of level k alone, x2 and the locals run in local mode (no
restorations at all). The authors' loop computes every restoration of every view and
throws most of them away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InvalidInputError
from ..models.outputs import PyramidLevel
from .config import OBJECTIVES
from .views import ViewBatch

RESTORATION_TERMS = ("restoration", "multiscale_restoration")
COMPARISON_TERMS = ("comparison", "local_comparison")


def restoration_loss(restored: Tensor, target: Tensor) -> Tensor:
    """Pixel restoration: mean over the batch and all voxels of (restored - target)^2."""
    return F.mse_loss(restored.float(), target.float())


def comparison_loss(first: PyramidLevel, second: PyramidLevel) -> Tensor:
    """Symmetric stop-gradient comparison of two views at one level (SimSiam-style).

    C = -1/2 [cos(p1, sg z2) + cos(p2, sg z1)], each cosine averaged over the batch;
    -1 when the predictions point exactly along the other view's projections. Without
    the stop-gradient the two branches could agree by collapsing to a constant.
    """
    forward = F.cosine_similarity(first.prediction.float(), second.projection.detach().float())
    backward = F.cosine_similarity(second.prediction.float(), first.projection.detach().float())
    return -0.5 * (forward.mean() + backward.mean())


def local_comparison_loss(
    global_levels: Sequence[Sequence[PyramidLevel]],
    local_levels: Sequence[PyramidLevel],
    levels: Sequence[Sequence[int]],
) -> Tensor:
    """Each local view against each global view, each pair at its own level, averaged.

    L = 1/(G N) sum_{i<N} sum_{g<G} C_{k_ig}(global g, local i) with G = 2 global views.
    ``local_levels`` hold the N locals of every sample stacked view-major (row
    i * B + b is local i of sample b); ``levels[i][g]`` is the drawn level k_ig.
    """
    num_locals = len(levels)
    pairs = []
    for i, per_global in enumerate(levels):
        for views, k in zip(global_levels, per_global, strict=True):
            batch = views[k].projection.shape[0]
            if local_levels[k].projection.shape[0] != num_locals * batch:
                raise InvalidInputError(
                    f"{local_levels[k].projection.shape[0]} local rows for {num_locals} locals "
                    f"of a batch of {batch}: stack the locals view-major, (N * B, C, ...)."
                )
            rows = slice(i * batch, (i + 1) * batch)
            local = PyramidLevel(
                local_levels[k].projection[rows], local_levels[k].prediction[rows], None
            )
            pairs.append(comparison_loss(views[k], local))
    return torch.stack(pairs).mean()


def deep_supervision_weight(epoch: int, epochs: int) -> float:
    """beta = 1/2 (1 + cos(pi * epoch / epochs)): multi-scale restoration fades out."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def multiscale_restoration_loss(restored: Tensor, target: Tensor, beta: float) -> Tensor:
    """beta * MSE between one level's deep-supervision image (at input size) and the target."""
    return beta * restoration_loss(restored, target)


@dataclass(frozen=True)
class LevelDraw:
    """The random pyramid levels of one step: k for x1/x2, and k_ig per (local i, global g)."""

    level: int
    local_levels: tuple[tuple[int, int], ...]


def draw_levels(generator: torch.Generator, num_levels: int, num_locals: int) -> LevelDraw:
    """Draw the step's levels from ``generator`` (a CPU generator), so a seed replays them."""
    draws = torch.randint(num_levels, (1 + 2 * num_locals,), generator=generator).tolist()
    pairs = tuple((draws[1 + 2 * i], draws[2 + 2 * i]) for i in range(num_locals))
    return LevelDraw(draws[0], pairs)


@dataclass(frozen=True)
class LossOutput:
    """The total, each named term (detached where it was not computed: zero), and the
    detached restoration of x1 for reports (None when the objective has no restoration)."""

    total: Tensor
    terms: dict[str, Tensor]
    restoration: Tensor | None


def pcrlv2_loss(
    model: nn.Module,
    views: ViewBatch,
    levels: LevelDraw,
    beta: float,
    objective: str = "full",
) -> LossOutput:
    """Run the forward passes the ``objective`` needs and combine the PCRLv2 terms.

    ``objective`` is ``"full"``, ``"restoration"`` (restoration + multi-scale restoration:
    x2 and the locals are not even run) or ``"comparison"`` (comparison + local
    comparison: no restoration is computed).
    """
    if objective not in OBJECTIVES:
        raise InvalidInputError(f"objective={objective!r}; choose one of {OBJECTIVES}.")
    restore = objective != "comparison"
    compare = objective != "restoration"
    k = levels.level
    out1 = model(views.inputs1, local=not restore, supervise=[k] if restore else [])
    terms: dict[str, Tensor] = {}
    if restore:
        terms["restoration"] = restoration_loss(out1.restoration, views.targets1)
        terms["multiscale_restoration"] = multiscale_restoration_loss(
            out1.levels[k].restoration, views.targets1, beta
        )
    if compare:
        out2 = model(views.inputs2, local=True)
        local_out = model(views.locals, local=True)
        terms["comparison"] = comparison_loss(out1.levels[k], out2.levels[k])
        terms["local_comparison"] = local_comparison_loss(
            (out1.levels, out2.levels), local_out.levels, levels.local_levels
        )
    total = torch.stack(list(terms.values())).sum()
    zero = total.detach().new_zeros(())
    for name in RESTORATION_TERMS + COMPARISON_TERMS:
        terms.setdefault(name, zero)
    restored = out1.restoration.detach() if restore else None
    return LossOutput(total, terms, restored)


class PCRLv2Objective(nn.Module):
    """The loss as a module, so that DistributedDataParallel sees one forward per step.

    DDP finds the parameters a step did not use (the deep-supervision heads of the
    levels not drawn) by walking back from the forward's output; with three separate
    model calls per step it would only see the last one.
    """

    def __init__(self, model: nn.Module, objective: str = "full"):
        super().__init__()
        if objective not in OBJECTIVES:
            raise InvalidInputError(f"objective={objective!r}; choose one of {OBJECTIVES}.")
        self.model = model
        self.objective = objective

    def forward(self, views: ViewBatch, levels: LevelDraw, beta: float) -> LossOutput:
        return pcrlv2_loss(self.model, views, levels, beta, self.objective)
