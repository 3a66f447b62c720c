"""The transfer benchmark: how much do pretrained weights help with few labels?

``pcrlv2-hub benchmark`` (or :func:`run_benchmark`) fine-tunes and probes each set of
weights on few-label OpenKBP organ segmentation and AdrenalMNIST3D classification over
seeds, and writes a results file, Markdown tables and a label-efficiency figure.
"""

from __future__ import annotations

from .protocol import PROTOCOLS, Protocol
from .runner import WeightsSpec, run_benchmark

__all__ = ["PROTOCOLS", "Protocol", "WeightsSpec", "run_benchmark"]
