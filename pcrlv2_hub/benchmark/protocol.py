"""The benchmark's protocols: what is trained, on how many labels, for how long.

``cpu`` is sized so that four sets of weights (PCRLv2, its two ablations and random
initialisation) finish in under two hours on a 2-core CPU; ``tiny`` runs every code path
in seconds, for tests. Every value is stored in the results, so a table says exactly what
produced it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInputError
from .classification_probe import ClassificationProbeSettings
from .probe import ProbeSettings
from .segmentation import SegmentationSettings

ALL = "all"


@dataclass(frozen=True)
class ClassificationSettings:
    """AdrenalMNIST3D fine-tuning: each run sees about the same number of samples, since
    ``epochs = min(max_epochs, ceil(epochs_at_full_labels / fraction))``."""

    label_fractions: tuple[float, ...] = (0.05, 0.1, 0.25, 1.0)
    epochs_at_full_labels: int = 1
    max_epochs: int = 8
    patience: int = 5
    batch_size: int = 16
    lr: float = 1e-3


@dataclass(frozen=True)
class Protocol:
    """One benchmark protocol; ``label_counts`` are labelled training patients ("all": all)."""

    name: str
    seeds: tuple[int, ...] = (0, 1, 2)
    label_counts: tuple[int | str, ...] = (1, 2, 5, 10, ALL)
    roi_size: tuple[int, int, int] = (64, 64, 128)
    test_cases: int | None = None
    """Use only the first N test patients of the split (None: all of them)."""
    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    classification: ClassificationSettings = field(default_factory=ClassificationSettings)
    classification_probe: ClassificationProbeSettings = field(
        default_factory=ClassificationProbeSettings
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOLS = {
    "cpu": Protocol("cpu"),
    "tiny": Protocol(
        "tiny",
        seeds=(0,),
        label_counts=(1, ALL),
        test_cases=2,
        segmentation=SegmentationSettings(steps=2, patch_size=(16, 16, 16)),
        probe=ProbeSettings(voxels_per_case=200, steps=5),
        classification=ClassificationSettings(
            label_fractions=(0.05,), epochs_at_full_labels=1, max_epochs=1, patience=1
        ),
        classification_probe=ClassificationProbeSettings(penalties=(1e-2,), max_iterations=5),
    ),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise InvalidInputError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}.")
    return PROTOCOLS[name]
