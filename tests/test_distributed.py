"""``torchrun`` on the CPU (gloo) against one process, on the real CT; two nodes simulated.

PyTorch's SyncBatchNorm runs only on GPUs, so on gloo each process normalises with the
statistics of its own half of the batch. One process reproduces exactly that with two
accumulation micro-batches (the same shards, see ``pretrain/sharding.py``); the
parameters must then agree. The BatchNorm running statistics (buffers, unused in
training) legitimately differ: DDP keeps rank 0's, accumulation folds in both halves.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pcrlv2_hub.pretrain.checkpoint import LAST, load_checkpoint
from pcrlv2_hub.pretrain.config import SAMPLE_DATA
from pcrlv2_hub.pretrain.trainer import METRICS

STEPS = 3
RUN = [
    "pretrain",
    "--data", str(SAMPLE_DATA / "*_ct.nii.gz"),
    "--widths", "4,8,8,16",
    "--view", "global_size=[16,16,8]",
    "--view", "local_size=[8,8,8]",
    "--view", "num_locals=2",
    "--batch-size", "4",
    "--epochs", "1",
    "--steps-per-epoch", str(STEPS),
    "--checkpoint-every", "1000",
    "--workers", "0",
    "--device", "cpu",
    "--no-progress",
]  # fmt: skip


# torchrun gives each process one thread; the single process gets the same, since the
# CPU kernels' summation order (hence the last bits) depends on the number of threads.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _pretrain(launcher: list[str], output: Path, cache: Path, *flags: str) -> tuple[Path, str]:
    """Run ``pcrlv2-hub pretrain`` in child processes; (output folder, stdout)."""
    done = subprocess.run(
        [sys.executable, *launcher, "-m", "pcrlv2_hub.cli", *RUN, *flags,
         "--output", str(output), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **ONE_THREAD},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return output, done.stdout


def _parameters(output: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(output)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state["model"].items() if not k.endswith(buffers)}


def _two_nodes(output: Path, root: Path) -> tuple[Path, str]:
    """Two launchers on this machine as two nodes of one process each, with own caches."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
    ]
    nodes = [
        subprocess.Popen(
            [*command, "--node_rank", str(node), "-m", "pcrlv2_hub.cli", *RUN,
             "--output", str(output), "--cache-dir", str(root / f"node{node}_cache")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **ONE_THREAD},
        )
        for node in (0, 1)
    ]  # fmt: skip
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr[-3000:]
    return output, outputs[0][0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("distributed")
    cache = root / "cache"
    return {
        "torchrun": _pretrain(TORCHRUN, root / "torchrun", cache),
        "accumulated": _pretrain([], root / "accumulated", cache, "--accumulation", "2"),
        "whole_batch": _pretrain([], root / "whole_batch", cache),
        "two_nodes": _two_nodes(root / "two_nodes", root),
    }


def _data(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())["data"]


def test_the_ranks_share_the_decoding_into_one_cache(runs):
    assert _data(runs["torchrun"][0])["decoded_per_rank"] == [1, 1]  # two CTs, one each
    assert _data(runs["accumulated"][0])["decoded_per_rank"] == [0]  # all cached by then
    # node-local caches: each node decodes everything once, for its ranks
    assert _data(runs["two_nodes"][0])["decoded_per_rank"] == [2, 2]


def test_two_nodes_train_the_same_weights_as_two_processes_on_one(runs):
    nodes, single = _parameters(runs["two_nodes"][0]), _parameters(runs["torchrun"][0])
    assert nodes.keys() == single.keys()
    assert all(torch.equal(nodes[name], single[name]) for name in nodes)


def test_two_processes_train_the_same_weights_as_one(runs):
    ddp = _parameters(runs["torchrun"][0])
    accumulated = _parameters(runs["accumulated"][0])
    assert ddp.keys() == accumulated.keys()
    for name in ddp:
        torch.testing.assert_close(ddp[name], accumulated[name], rtol=1e-6, atol=1e-8, msg=name)
    # the comparison is sensitive: whole-batch BatchNorm statistics give other weights
    whole = _parameters(runs["whole_batch"][0])
    assert max((ddp[k] - whole[k]).abs().max().item() for k in ddp) > 1e-6
    losses = [
        [json.loads(line)["total"] for line in (output / METRICS).read_text().splitlines()]
        for output in (runs["torchrun"][0], runs["accumulated"][0])
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_only_rank_zero_writes(runs):
    output, stdout = runs["torchrun"]
    files = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())
    assert files == [
        "config.json",
        "export/README.md",
        "export/manifest_entry.json",
        "export/model.safetensors",
        LAST,
        "loss_curves.png",
        METRICS,
        "restorations.png",
        "summary.json",
    ]  # a second writer would have rotated last.pt into previous.pt
    assert len((output / METRICS).read_text().splitlines()) == STEPS
    assert stdout.count("Trained") == 1
    assert load_checkpoint(output)["world_size"] == 2
