"""One process or many (``torchrun``): who am I, which device, who writes files.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the run is a
single process. Many processes talk through NCCL on GPUs and gloo on CPUs; only rank 0
writes checkpoints, logs, reports and the export.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import InvalidInputError
from .config import DEVICES


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files, so many processes never race on one path."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def start(device: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Read the launcher's environment, pick the device and join the process group.

    ``timeout_s`` bounds every collective operation; a rank that waits longer for the
    others (one of them died, say) fails instead of hanging.
    """
    if device not in DEVICES:
        raise InvalidInputError(f"device={device!r}; choose one of {DEVICES}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(
            "device='cuda' but PyTorch sees no GPU; install a CUDA build of torch or use "
            "--device cpu."
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    here = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(seconds=timeout_s),
            **_fresh_store_after_restart(rank, world_size, timeout_s),
        )
    return DistributedContext(rank, world_size, local_rank, here)


def _fresh_store_after_restart(rank: int, world_size: int, timeout_s: float) -> dict:
    """After ``torchrun --max-restarts`` restarted the group, a key space of its own.

    The agent's store outlives its workers, so a restarted rank may read the address a
    killed peer published and connect to a dead port until it times out (seen under load:
    "Gloo connectFullMesh failed ... Connection refused"). Prefixing the keys with the
    restart count makes each attempt rendezvous among its own processes only.
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not restart or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
    )
    prefixed = dist.PrefixStore(f"pcrlv2_hub/restart_{restart}", store)
    return {"store": prefixed, "rank": rank, "world_size": world_size}


def stop() -> None:
    """Leave the process group (a no-op for a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(values: Tensor, context: DistributedContext) -> Tensor:
    """Element-wise sum of ``values`` over all processes (itself for one process)."""
    if context.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
