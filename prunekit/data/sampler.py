"""Which samples each rank trains on, step by step: a seeded, sharded, resumable epoch order.

Semantics follow torch's DistributedSampler: the epoch's permutation (from the generator
seeded by (seed, stage, epoch)) is padded by repeating its head until its length divides
the world size, and rank r takes positions r, r + W, r + 2W, ... Every sample is seen once
per epoch across ranks (the few padded ones twice) and every rank runs the same number of
steps. Batching a rank's list into `batch_size / W` pieces makes the union of the ranks'
step-k batches equal to positions [kB, (k+1)B) of the padded permutation, which is the
single-process step-k batch: one process and W ranks train on the same global batches.
`start_step` skips whole batches without touching data, for mid-epoch resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import ConfigError


@dataclass(frozen=True)
class EpochShard:
    """The batches of one epoch for one rank."""

    n: int  # samples in the dataset
    batch_size: int  # global batch size
    seed: int  # seeds the epoch permutation (derive_seed(seed, stage, epoch, 0))
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError("the training split is empty; point data_dir at a folder with images")
        if self.batch_size % self.world_size:
            raise ConfigError(f"data.batch_size {self.batch_size} is not divisible by the {self.world_size} ranks; "
                              f"use a multiple of {self.world_size}")

    @property
    def padded(self) -> int:
        """Epoch length after padding to a multiple of the world size."""
        return -(-self.n // self.world_size) * self.world_size

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch (the last global batch may be smaller)."""
        return -(-self.padded // self.batch_size)

    def order(self) -> Tensor:
        """The padded global order of sample indices for this epoch."""
        if self.shuffle:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
        else:
            perm = torch.arange(self.n)
        pad = self.padded - self.n
        return torch.cat([perm, perm.repeat(-(-pad // self.n))[:pad]]) if pad else perm

    def batches(self, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """(sample indices, positions in the global batch) for this rank's steps from `start_step` on."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps}")
        order = self.order()
        for step in range(start_step, self.steps):
            glob = order[step * self.batch_size : (step + 1) * self.batch_size]
            positions = torch.arange(self.rank, len(glob), self.world_size)
            yield glob[positions], positions

    def global_size(self, step: int) -> int:
        """Samples in the global batch of `step` (every rank's part together)."""
        return min(self.batch_size, self.padded - step * self.batch_size)


class ShardBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A DataLoader batch_sampler over one EpochShard: lists of dataset indices, one per step."""

    def __init__(self, shard: EpochShard, start_step: int = 0):
        self.shard, self.start_step = shard, start_step

    def __iter__(self) -> Iterator[list[int]]:
        for idx, _ in self.shard.batches(self.start_step):
            yield idx.tolist()

    def __len__(self) -> int:
        return self.shard.steps - self.start_step
