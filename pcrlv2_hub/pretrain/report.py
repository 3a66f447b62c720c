"""The pictures people watch during a run: loss curves and restorations, as PNG files.

Figures are built with matplotlib's object API (``Figure``, never pyplot), which renders
with the file-only Agg backend: no display, no global state. Every PNG is written
atomically so a viewer never opens half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from torch import Tensor

from ..atomic import atomic_output

LOSS_CURVES = "loss_curves.png"
RESTORATIONS = "restorations.png"


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics JSONL file (one JSON object per line)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(records: Sequence[dict], terms: Sequence[str], out: str | os.PathLike) -> Path:
    """Each loss term and the total against the step, with the learning rate below."""
    figure = Figure(figsize=(8, 6))
    losses, rates = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    steps = [r["step"] for r in records]
    for name in ("total", *terms):
        losses.plot(steps, [r[name] for r in records], label=name, lw=2 if name == "total" else 1)
    losses.set_ylabel("loss")
    losses.legend(loc="upper right", fontsize="small")
    losses.grid(alpha=0.3)
    rates.plot(steps, [r["lr"] for r in records], color="black")
    rates.set_ylabel("learning rate")
    rates.set_xlabel("step")
    rates.grid(alpha=0.3)
    return _save(figure, out)


def plot_restorations(
    clean: Tensor, corrupted: Tensor, restored: Tensor, out: str | os.PathLike, title: str = ""
) -> Path:
    """Mid-slices of one sample: the clean target, the corrupted input, the restoration.

    Tensors are (C, *spatial) of one view; the first channel is shown, each panel with
    its own grey range. A 3D view, indexed (x, y, z), gets one row per axis (its middle
    slice across x, y and z, shown with the first remaining axis horizontal); a 2D
    image, (H, W), a single row.
    """
    images = [t.detach().float().cpu()[0] for t in (clean, corrupted, restored)]
    if images[0].dim() == 3:
        rows = [[v.select(a, v.shape[a] // 2).T for v in images] for a in range(3)]
        origin = "lower"
    else:
        rows, origin = [images], "upper"
    figure = Figure(figsize=(9, 3 * len(rows)))
    axes = figure.subplots(len(rows), 3, squeeze=False)
    titles = ("clean target", "corrupted input", "restored")
    for row, panels in enumerate(rows):
        for column, panel in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(panel.numpy(), cmap="gray", origin=origin)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column])
    figure.suptitle(title)
    return _save(figure, out)


def _save(figure: Figure, out: str | os.PathLike) -> Path:
    figure.tight_layout()
    with atomic_output(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return Path(out)
