"""The paper's downstream segmentation protocols as presets of ``finetune-volumes``.

Each preset fixes what the authors' fine-tuning code (github.com/RL4M/PCRLv2) fixes:
intensity normalisation, resolution, patch size, and the regions that are reported.
What it cannot fix is the data: bring the dataset in the layout the preset names.

- ``brats2018``: BraTS case folders, four MRI sequences; each volume scaled by its own
  minimum and maximum (the authors' normalisation); no resampling (BraTS ships 1 mm
  co-registered volumes); 112 x 128 x 112 patches (their crop); reported on the regions
  whole tumour (labels 1, 2, 4), tumour core (1, 4) and enhancing tumour (4). The
  authors trained the three regions as sigmoid outputs; here the labels are trained as
  classes and the regions scored from the predicted labels.
- ``lits2017``: a Decathlon folder (Task03_Liver has the LiTS 2017 training cases) or a
  CSV; CT window [-200, 200] HU; 1 mm between slices and half the in-plane resolution
  (the authors' ``down_scale`` 0.5 of about 0.75 mm, hence 1.5 mm); patches of 64 slices
  of 256 x 256 (their 64-slice inputs); reported on liver (labels 1, 2) and tumour (2).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidInputError
from ..pretrain.volumes import Preprocessing


@dataclass(frozen=True)
class Protocol:
    """Preprocessing, patch size and reported regions of one downstream task."""

    preprocessing: Preprocessing
    patch_size: tuple[int, int, int]
    regions: dict[str, tuple[int, ...]]
    """Reported region -> the label values it unites."""
    layout: str


PROTOCOLS = {
    "brats2018": Protocol(
        Preprocessing(spacing=None, modality="mri", percentiles=(0.0, 100.0)),
        (112, 128, 112),
        {"whole tumour": (1, 2, 4), "tumour core": (1, 4), "enhancing tumour": (4,)},
        "BraTS case folders",
    ),
    "lits2017": Protocol(
        Preprocessing(spacing=(1.5, 1.5, 1.0), modality="ct", window=(-200.0, 200.0)),
        (256, 256, 64),
        {"liver": (1, 2), "tumour": (2,)},
        "a Decathlon folder (Task03_Liver) or a CSV",
    ),
}


def get_protocol(name: str) -> Protocol:
    """The preset called ``name``; InvalidInputError listing the known ones otherwise."""
    if name not in PROTOCOLS:
        raise InvalidInputError(
            f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)} (luna16 nodule "
            "classification is not a segmentation protocol: use `finetune --task classify3d "
            "--protocol luna16`)."
        )
    return PROTOCOLS[name]
