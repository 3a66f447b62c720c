"""Does PCRLv2 pretraining help downstream, and which of its terms does the work?

    python benchmarks/transfer/run_experiment.py              # CPU-sized protocol (cpu.json)
    python benchmarks/transfer/run_experiment.py --full-size  # the paper's sizes, for a GPU

1. 3D pretraining on real CT volumes, three objectives from one seed and one budget
   (restoration only, comparison only, full PCRLv2), with ``pcrlv2_hub.pretrain``;
2. fine-tuning on AdrenalMNIST3D at each label fraction and seed, for every pretrained
   encoder and for random initialisation of the same architecture (``scratch:FILE``);
3. 2D: pretraining on the NIH1000 training images (labels unused), then normal/abnormal
   fine-tuning, pretrained vs scratch;
4. ``results.json`` (every run's metrics, updated after each run, so a stopped experiment
   resumes where it stopped), ``RESULTS.md`` and the label-efficiency PNG (``report.py``).

Each fine-tune sees the same number of training samples whatever its label fraction:
``epochs = min(max_epochs, ceil(epochs_at_full_labels / fraction))``, and keeps the epoch
with the lowest validation loss (``patience`` epochs without improvement stop it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pcrlv2_hub.atomic import write_text_atomic
from pcrlv2_hub.finetune import FinetuneConfig, TrainingSettings, finetune
from pcrlv2_hub.pretrain.config import PretrainConfig
from pcrlv2_hub.pretrain.trainer import LAST, pretrain

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import report  # noqa: E402  (the sibling module that turns results.json into tables)

SCRATCH = "scratch"


def load_protocol(full_size: bool) -> dict[str, Any]:
    """cpu.json, with full_size.json's sections replacing the CPU-sized values."""
    protocol = json.loads((HERE / "cpu.json").read_text())
    if full_size:
        for key, value in json.loads((HERE / "full_size.json").read_text()).items():
            protocol[key] = {**protocol[key], **value} if isinstance(value, dict) else value
    return protocol


class Experiment:
    """The phases, timed; ``results.json`` is rewritten after every fine-tuning run."""

    def __init__(self, protocol: dict[str, Any], data_root: Path, out: Path, work: Path):
        self.protocol, self.data_root, self.out, self.work = protocol, data_root, out, work
        self.results_path = out / "results.json"
        self.results = self._previous_results() or {
            "protocol": protocol,
            "command": "python " + " ".join(sys.argv),
            "environment": _environment(protocol["threads"]),
            "phase_seconds": {},
            "pretraining": {},
            "runs": [],
        }

    def _previous_results(self) -> dict[str, Any] | None:
        if not self.results_path.exists():
            return None
        previous = json.loads(self.results_path.read_text())
        if previous["protocol"] != self.protocol:
            sys.exit(f"{self.results_path} holds another protocol; pass another --out.")
        return previous

    def run(self) -> None:
        for objective in self.protocol["objectives_3d"]:
            self._timed(f"pretrain_3d_{objective}", self.pretrain, 3, objective)
        self._timed("pretrain_2d_full", self.pretrain, 2, "full")
        self._timed("finetune_3d", self.finetune_all, 3)
        self._timed("finetune_2d", self.finetune_all, 2)
        report.write_report(self.results, self.out)

    def _timed(self, phase: str, function: Any, *args: Any) -> None:
        start = time.perf_counter()
        function(*args)
        seconds = self.results["phase_seconds"]
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start
        self._save()

    def weights(self, dim: int, objective: str) -> Path:
        return self.work / f"pretrain_{dim}d_{objective}" / "export" / "model.safetensors"

    def pretrain(self, dim: int, objective: str) -> None:
        """One pretraining run (resumed if it was stopped); skipped when already exported."""
        if self.weights(dim, objective).exists():
            return
        output = self.work / f"pretrain_{dim}d_{objective}"
        config = PretrainConfig.from_dict(
            {
                **self.protocol[f"pretrain_{dim}d"],
                "dim": dim,
                "data": self._pretraining_data(dim),
                "output": str(output),
                "objective": objective,
                "cache_dir": str(self.work / "volume_cache"),
                "progress": False,
            }
        )
        summary = pretrain(config, resume=(output / LAST).exists(), command=self.results["command"])
        if summary.interrupted:
            sys.exit(f"pretraining stopped at step {summary.step}; run again to resume it.")
        self.results["pretraining"][f"{dim}d_{objective}"] = {
            "steps": summary.step,
            "seconds": summary.seconds,
            "final_losses": summary.losses,
            "data": summary.data,
        }

    def _pretraining_data(self, dim: int) -> str:
        if dim == 2:
            return str(self.data_root / self.protocol["images_2d"])
        listing = self.work / "volumes_3d.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{self.data_root / v}\n" for v in self.protocol["volumes_3d"]))
        return str(listing)

    def finetune_all(self, dim: int) -> None:
        """Seeds outermost, so that a stopped experiment has every variant at some seeds."""
        variants = self.protocol["objectives_3d"] if dim == 3 else ["full"]
        runs = self.results["runs"]
        done = {(r["dim"], r["variant"], r["label_fraction"], r["seed"]) for r in runs}
        for seed in self.protocol["seeds"]:
            for fraction in self.protocol["label_fractions"]:
                for variant in [*variants, SCRATCH]:
                    if (dim, variant, fraction, seed) not in done:
                        runs.append(self.finetune(dim, variant, fraction, seed))
                        self._save()

    def finetune(self, dim: int, variant: str, fraction: float, seed: int) -> dict[str, Any]:
        settings = self.protocol[f"finetune_{dim}d"]
        epochs = math.ceil(settings["epochs_at_full_labels"] / fraction)
        epochs = min(settings["max_epochs"], epochs)
        pretrained = self.weights(dim, "full" if variant == SCRATCH else variant)
        config = FinetuneConfig(
            task=f"classify{dim}d",
            data=str(self.data_root / self.protocol[f"target_{dim}d"]),
            weights=f"{SCRATCH}:{pretrained}" if variant == SCRATCH else str(pretrained),
            label_fraction=fraction,
            seed=seed,
            training=TrainingSettings(
                epochs=epochs,
                batch_size=settings["batch_size"],
                lr=settings["lr"],
                patience=settings["patience"],
            ),
        )
        results = finetune(config).results
        test = results["metrics"]["test"]
        print(f"{dim}D {variant:>11} {fraction:>5.0%} seed {seed}: test {test}", flush=True)
        return {
            "dim": dim,
            "variant": variant,
            "label_fraction": fraction,
            "seed": seed,
            "train_samples": results["data"]["samples"]["train"],
            "epochs": epochs,
            "epochs_run": results["epochs_run"],
            "best_epoch": results["best_epoch"],
            "train_seconds": results["train_seconds"],
            "weights_sha256": results["weights"]["sha256"],
            "metrics": results["metrics"],
        }

    def _save(self) -> None:
        self.results["phase_seconds"]["total"] = sum(
            v for k, v in self.results["phase_seconds"].items() if k != "total"
        )
        write_text_atomic(self.results_path, json.dumps(self.results, indent=1) + "\n")


def _environment(threads: int | None) -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                  if line.startswith("Model name")), platform.processor())  # fmt: skip
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-size", action="store_true", help="the paper's sizes (GPU)")
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, help="default: this folder (full size: ./full_size)")
    parser.add_argument(
        "--work", type=Path, help="pretraining runs and volume cache; default: in the temp dir"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite RESULTS.md and the PNG only"
    )
    args = parser.parse_args()
    out = args.out or (HERE / "full_size" if args.full_size else HERE)
    if args.report_only:
        report.write_report(json.loads((out / "results.json").read_text()), out)
        return
    protocol = load_protocol(args.full_size)
    if protocol["threads"]:
        torch.set_num_threads(protocol["threads"])
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.gettempdir()) / f"pcrlv2_transfer_{out.name}"
    Experiment(protocol, args.data_root, out, work).run()


if __name__ == "__main__":
    main()
