"""Which dataset items each process reads at each step.

Step ``s`` of an epoch trains on the items ``s * B .. (s + 1) * B - 1`` (B: the global
batch), cut into ``world_size * accumulation`` equal shards: process ``r`` reads shards
``r * A .. r * A + A - 1``, one micro-batch each. A shard therefore holds the same items
whether it is one process's micro-batch or another process's whole batch, which is what
makes one process with accumulation A reproduce A processes. Dataset items are pure
functions of (seed, epoch, index), so reading them sequentially loses no randomness.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler

from ..errors import InvalidInputError


class StepShardSampler(Sampler[int]):
    """The item indices of one process for steps ``first_step .. steps - 1`` of an epoch."""

    def __init__(
        self,
        batch_size: int,
        steps: int,
        rank: int = 0,
        world_size: int = 1,
        accumulation: int = 1,
        first_step: int = 0,
    ):
        shards = world_size * accumulation
        if batch_size % shards:
            raise InvalidInputError(
                f"batch_size={batch_size} does not split into {world_size} processes x "
                f"{accumulation} accumulation steps; use a multiple of {shards}."
            )
        self.batch_size = batch_size
        self.steps = steps
        self.first_step = first_step
        self.shard_size = batch_size // shards
        self.shards = range(rank * accumulation, (rank + 1) * accumulation)

    def __len__(self) -> int:
        return (self.steps - self.first_step) * len(self.shards) * self.shard_size

    def __iter__(self) -> Iterator[int]:
        for step in range(self.first_step, self.steps):
            for shard in self.shards:
                start = step * self.batch_size + shard * self.shard_size
                yield from range(start, start + self.shard_size)

    def shard_index(self, micro_batch: int) -> int:
        """The global shard number of this process's ``micro_batch``-th micro-batch of a step."""
        return self.shards[micro_batch]
