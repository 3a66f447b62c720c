"""Fine-tuning on patches of whole volumes: MONAI data pipeline, partial-label loss, resumable.

Each case is read and resampled once (:func:`~.case_volumes.load_case`) and kept by MONAI's
``PersistentDataset`` in the run's cache folder; every step then draws fresh patches from
a few cases (:func:`~.patches.patch_transform`) in DataLoader workers. The loss counts
only the classes each case labels. Every ``validate_every`` steps the network segments
the whole validation cases by sliding window; the best mean Dice is kept. A checkpoint
after each validation makes ``--resume`` continue where the run stopped. On CUDA the
forward pass runs in bfloat16 (autocast; no loss scaling needed), the loss in float32.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, PersistentDataset, list_data_collate
from monai.transforms import Compose, Transform
from torch import nn

from ..errors import InvalidInputError
from ..pretrain.checkpoint import load_checkpoint, save_checkpoint
from ..pretrain.volumes import Preprocessing
from .case_volumes import load_case
from .cases import Case
from .inference import predict_labels
from .losses import partial_label_loss
from .overlay import write_overlay
from .patches import patch_transform
from .segmentation_metrics import case_metrics, region_metrics, summarise


@dataclass(frozen=True)
class PatchSettings:
    """How patches are drawn and the network trained on them."""

    patch_size: tuple[int, int, int] = (96, 96, 96)
    foreground_share: float = 0.33
    """The expected share of patches centred on a labelled voxel (nnU-Net's 1/3)."""
    patches_per_case: int = 2
    cases_per_step: int = 1
    steps: int = 1000
    validate_every: int = 250
    lr: float = 1e-3
    weight_decay: float = 1e-4
    overlap: float = 0.5
    """Of neighbouring sliding windows at validation and prediction."""
    workers: int = 0
    """DataLoader worker processes drawing patches (0: in the training process)."""
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    """Axes flipped at random; leave out x (0) where classes have a side."""

    def __post_init__(self) -> None:
        counts = {
            k: v
            for k, v in asdict(self).items()
            if k in ("patches_per_case", "cases_per_step", "steps", "validate_every")
        }
        for name, value in counts.items():
            if value < 1:
                raise InvalidInputError(f"{name}={value} must be at least 1.")
        if self.workers < 0 or not self.lr > 0:
            raise InvalidInputError("workers must be >= 0 and the learning rate positive.")


class _CaseLoader(Transform):
    """The deterministic head of the pipeline: a case dict of paths -> arrays. A MONAI
    ``Transform`` (PersistentDataset caches only up to the first transform that is not
    one), picklable for DataLoader workers."""

    def __init__(self, preprocessing: Preprocessing, num_classes: int) -> None:
        self.preprocessing, self.num_classes = preprocessing, num_classes

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        listed = item["labelled"]
        case = Case(
            item["name"],
            tuple(map(Path, item["images"])),
            Path(item["label"]),
            None if listed is None else tuple(listed),
        )
        loaded = load_case(case, self.preprocessing, self.num_classes)
        labelled = np.zeros(self.num_classes, bool)
        labelled[[0, *(range(1, self.num_classes) if listed is None else listed)]] = True
        label = loaded.label.astype(np.uint8 if self.num_classes <= 256 else np.int64)
        return {"image": loaded.image, "label": label[None], "labelled": labelled}


def train_on_patches(
    model: nn.Module,
    train_cases: list[Case],
    val_cases: list[Case],
    *,
    num_classes: int,
    preprocessing: Preprocessing,
    settings: PatchSettings,
    run_dir: Path,
    seed: int = 0,
    device: str | torch.device = "cpu",
    resume: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Train ``model`` in place; it ends holding the best validated weights. Returns the
    history (loss per step, validation Dice) and the best step."""
    device = torch.device(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    state = {"step": 0, "best_dice": -1.0, "best_step": 0, "losses": [], "validations": []}
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume:
        saved = load_checkpoint(run_dir)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        best, state = saved["best"], saved["progress"]
    patches = _patches(
        train_cases, preprocessing, num_classes, settings, run_dir / "cache", seed + state["step"]
    )
    started = time.perf_counter()
    while state["step"] < settings.steps:
        batch = next(patches)
        model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch["image"].to(device))
        loss = partial_label_loss(
            logits.float(), batch["label"][:, 0].to(device), batch["labelled"].to(device)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state["step"] += 1
        state["losses"].append(loss.item())
        if state["step"] % settings.validate_every == 0 or state["step"] == settings.steps:
            dice = _validate(model, val_cases, num_classes, preprocessing, settings, device)
            state["validations"].append({"step": state["step"], "mean_dice": dice})
            if dice is None or dice > state["best_dice"]:
                state["best_dice"], state["best_step"] = (
                    dice if dice is not None else -1.0,
                    state["step"],
                )
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            recent = np.mean(state["losses"][-settings.validate_every :])
            shown = "none (no validation cases)" if dice is None else f"{dice:.4f}"
            log(
                f"step {state['step']}/{settings.steps}: loss {recent:.4f}, validation Dice {shown}"
            )
            save_checkpoint(
                run_dir,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best": best,
                    "progress": state,
                },
            )
    model.load_state_dict(best)
    return {**state, "train_seconds": time.perf_counter() - started}


def evaluate_cases(
    model: nn.Module,
    cases: list[Case],
    *,
    num_classes: int,
    preprocessing: Preprocessing,
    settings: PatchSettings,
    device: str | torch.device = "cpu",
    example: Path | None = None,
    regions: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """Dice and HD95 per case and class on whole cases (sliding window), and their summary;
    per reported region too if ``regions`` are given (label value unions); a picture of
    the first case at ``example`` if given."""
    per_case, per_region = {}, {}
    for case in cases:
        loaded = load_case(case, preprocessing, num_classes)
        image = torch.from_numpy(loaded.image)
        predicted = predict_labels(
            model, image, settings.patch_size, overlap=settings.overlap, device=device
        ).numpy()
        per_case[case.name] = case_metrics(
            predicted, loaded.label, num_classes, loaded.grid.spacing, case.labelled
        )
        if regions:
            per_region[case.name] = region_metrics(
                predicted, loaded.label, regions, loaded.grid.spacing
            )
        if example is not None and len(per_case) == 1:
            write_overlay(loaded, predicted, example, num_classes)
    results = {
        "summary": summarise(list(per_case.values())) if per_case else None,
        "cases": per_case,
    }
    if regions:
        results["regions"] = {
            "names": list(regions),
            "summary": summarise(list(per_region.values())) if per_region else None,
            "cases": per_region,
        }
    return results


def _validate(model, cases, num_classes, preprocessing, settings, device) -> float | None:
    if not cases:
        return None
    metrics = evaluate_cases(
        model,
        cases,
        num_classes=num_classes,
        preprocessing=preprocessing,
        settings=settings,
        device=device,
    )
    return metrics["summary"]["dice"]["mean"]


def _patches(
    cases: list[Case],
    preprocessing: Preprocessing,
    num_classes: int,
    settings: PatchSettings,
    cache: Path,
    seed: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of cases_per_step x patches_per_case patches, forever."""
    if not cases:
        raise InvalidInputError("there are no labelled training cases to draw patches from.")
    items = [
        {
            "name": c.name,
            "images": [str(p) for p in c.images],
            "label": str(c.label),
            "labelled": list(c.labelled) if c.labelled is not None else None,
        }
        for c in cases
    ]
    draw = patch_transform(
        settings.patch_size,
        foreground_share=settings.foreground_share,
        patches_per_case=settings.patches_per_case,
        mirror_axes=settings.mirror_axes,
    )
    transform = Compose([_CaseLoader(preprocessing, num_classes), *draw.transforms])
    transform.set_random_state(seed=seed)
    dataset = PersistentDataset(items, transform, cache_dir=cache)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=settings.cases_per_step,
        shuffle=True,
        generator=generator,
        num_workers=settings.workers,
        collate_fn=list_data_collate,
    )
    while True:
        yield from loader
