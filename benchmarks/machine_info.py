"""What a benchmark ran on, recorded beside its numbers: seconds only compare within a run."""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> dict[str, str | int | float]:
    """CPU model, cores, torch and Python versions, and the load average at the end."""
    import torch

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), platform.processor())  # fmt: skip
    return {"cpu": model, "cores": os.cpu_count() or 0, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average_1min_at_end": os.getloadavg()[0]}  # fmt: skip
