"""Diagnostic for RESULTS.md: are the frozen pretrained features better than random ones?

Fine-tuning can hide what pretraining learnt (a short fine-tune moves every weight), so
this looks at the encoders before any fine-tuning: pooled features of each encoder, a
logistic regression fitted on all training labels, scored on the VALIDATION split (the
test split stays reserved for the main tables). BatchNorm uses batch statistics for every
encoder, so the CT statistics stored by pretraining do not put it at a disadvantage.

    python benchmarks/transfer/probe_features.py [--work DIR] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from pcrlv2_hub.atomic import write_text_atomic
from pcrlv2_hub.finetune.datasets import load_dataset
from pcrlv2_hub.finetune.metrics import auc
from pcrlv2_hub.finetune.networks import build_network
from pcrlv2_hub.finetune.tasks import TASKS
from pcrlv2_hub.models.padding import pad_to_multiple

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def features(encoder: torch.nn.Module, images: np.ndarray, stride: int) -> torch.Tensor:
    encoder.train()  # batch statistics, for pretrained and random encoders alike
    batches = torch.from_numpy(images).split(64)
    return torch.cat([encoder(pad_to_multiple(x, stride)[0]) for x in batches])


def probe_auc(
    train: torch.Tensor, labels: np.ndarray, val: torch.Tensor, val_labels: np.ndarray
) -> float:
    """L2-regularised logistic regression on standardised features, validation AUC."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, val = (train - mean) / std, (val - mean) / std
    head = torch.nn.Linear(train.shape[1], 2)
    optimiser = torch.optim.LBFGS(head.parameters(), max_iter=200)
    targets = torch.from_numpy(labels).long()

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(train), targets)
        loss = loss + 1e-2 * head.weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        return auc(val_labels, head(val).softmax(1).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data"))
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "pcrlv2_transfer_transfer"
    )
    args = parser.parse_args()
    protocol = json.loads((HERE / "cpu.json").read_text())
    torch.set_num_threads(protocol["threads"] or torch.get_num_threads())
    probes = {}
    for dim, variants in ((3, protocol["objectives_3d"]), (2, ["full"])):
        task = TASKS[f"classify{dim}d"]
        data = load_dataset(args.data_root / protocol[f"target_{dim}d"], dim, False)
        train, val = data.splits["train"], data.splits["val"]
        for variant in [*variants, "scratch"]:
            pretrained = "full" if variant == "scratch" else variant
            file = args.work / f"pretrain_{dim}d_{pretrained}" / "export" / "model.safetensors"
            weights = f"scratch:{file}" if variant == "scratch" else str(file)
            model = build_network(task, weights, data.num_classes, None, seed=0)
            train_x, val_x = (
                features(model.encoder, task.prepare_images(s.images), model.stride)
                for s in (train, val)
            )
            name = f"{dim}d_{variant}"
            probes[name] = probe_auc(train_x, train.targets, val_x, val.targets)
            print(f"{name}: validation AUC of a linear probe {probes[name]:.3f}", flush=True)
    write_text_atomic(HERE / "probe_features.json", json.dumps(probes, indent=1) + "\n")


if __name__ == "__main__":
    main()
