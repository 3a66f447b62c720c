"""Hyper-parameters of a fine-tuning run, kept free of torch so the CLI can show defaults."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError

OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainingSettings:
    """Hyper-parameters of one fine-tuning run.

    ``linear_probe`` freezes the encoder (weights and normalisation statistics) and trains
    only what the task adds; otherwise the whole network is fine-tuned.
    """

    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    patience: int = 10
    linear_probe: bool = False

    def __post_init__(self) -> None:
        counts = {"epochs": self.epochs, "batch_size": self.batch_size, "patience": self.patience}
        for name, value in counts.items():
            if value < 1:
                raise InvalidInputError(f"{name}={value} must be at least 1.")
        if not self.lr > 0 or self.weight_decay < 0:
            raise InvalidInputError("the learning rate must be positive, weight decay >= 0.")
        if self.optimizer not in OPTIMIZERS:
            raise InvalidInputError(
                f"optimizer {self.optimizer!r} is unknown; choose one of {OPTIMIZERS}."
            )
