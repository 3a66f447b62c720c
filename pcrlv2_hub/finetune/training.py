"""The fine-tuning loop: seeded mini-batches, AdamW or SGD, early stopping on validation loss.

As in the authors' fine-tuning code, the loss on the whole validation split is measured
after every epoch; the weights of the best epoch are kept in memory and put back at the
end, and training stops after ``patience`` epochs without improvement. The data sits in
memory as arrays (downstream sets are small), so batches are plain tensor indexing.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import TrainingDivergedError
from .datasets import Split
from .settings import TrainingSettings
from .tasks import Task


@dataclass
class TrainingLog:
    """Per-epoch losses and validation metrics, the epoch kept, and the time it took."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0


def train(
    model: nn.Module,
    train_split: Split,
    val_split: Split,
    task: Task,
    num_classes: int,
    settings: TrainingSettings,
    *,
    seed: int,
    device: torch.device,
) -> TrainingLog:
    """Fine-tune ``model`` (which has an ``encoder``) in place; it ends with its best weights."""
    if settings.linear_probe:
        model.encoder.requires_grad_(False)
    optimizer = make_optimizer(model, settings)
    order = torch.Generator().manual_seed(seed)
    images, targets = torch.from_numpy(train_split.images), torch.from_numpy(train_split.targets)
    log, best_loss, best_state = TrainingLog(), math.inf, None
    start = time.perf_counter()
    epochs = tqdm(range(1, settings.epochs + 1), desc=f"{task.name} fine-tuning", unit="epoch")
    for epoch in epochs:
        model.train()
        if settings.linear_probe:
            model.encoder.eval()  # frozen BatchNorm statistics too
        total, seen = 0.0, 0
        for batch in _batches(len(images), settings.batch_size, order):
            loss = task.loss(model(images[batch].to(device)), targets[batch].to(device))
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"the training loss became {loss.item()} at epoch {epoch}; lower --lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(batch), seen + len(batch)
        val_loss, val_outputs = evaluate(model, val_split, task, settings.batch_size, device)
        metrics = task.metrics(val_outputs, val_split.targets, num_classes)
        log.history.append(
            {"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss, **metrics}
        )
        if val_loss < best_loss:
            best_loss, log.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        epochs.set_postfix(train_loss=f"{total / seen:.4f}", val_loss=f"{val_loss:.4f}")
        if epoch - log.best_epoch >= settings.patience:
            break
    epochs.close()
    log.train_seconds = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    return log


def _batches(count: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches; a last batch of one sample is left out, because
    BatchNorm cannot normalise a single sample whose feature map is 1 voxel."""
    batches = list(torch.randperm(count, generator=generator).split(batch_size))
    return batches[:-1] if len(batches) > 1 and len(batches[-1]) == 1 else batches


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, task: Task, batch_size: int, device: torch.device
) -> tuple[float, np.ndarray]:
    """Mean loss over ``split`` and the task's outputs (probabilities or label maps)."""
    model.eval()
    total, outputs = 0.0, []
    images, targets = torch.from_numpy(split.images), torch.from_numpy(split.targets)
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size].to(device))
        target = targets[start : start + batch_size].to(device)
        total += task.loss(logits, target).item() * len(target)
        outputs.append(task.outputs(logits))
    return total / len(images), np.concatenate(outputs)


def make_optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum 0.9, over the parameters that are not frozen."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay
        )
    return torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
