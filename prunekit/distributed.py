"""Data-parallel runs with torch.distributed (torchrun + DistributedDataParallel).

prunekit follows the SPMD rule: every rank runs the same pipeline on the same seed, so
weights, scoring data and therefore scores and masks are identical everywhere; only
the training batches are split. Each global batch (fixed by the shared epoch generator,
reshuffled every epoch) is cut into `world_size` contiguous shards, one per rank, and DDP
averages the gradients, which is the gradient of the global batch when shards are equal.
Mask agreement is verified at every mask change with a cheap checksum all-gather.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from prunekit.errors import PrunekitError


class RankDivergence(PrunekitError):
    """Masks (or other state that must agree) differ between ranks."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job (world_size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # PRUNEKIT_DIST_INIT (e.g. file:///tmp/store) rendezvous through a file: no TCP port to pick.
        init = os.environ.get("PRUNEKIT_DIST_INIT")
        if init:
            dist.init_process_group(backend=backend, init_method=init, rank=int(os.environ["RANK"]), world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return info()


def info() -> DistInfo:
    """The current process's rank information (no group: a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shard(x: Tensor, d: DistInfo | None = None) -> Tensor:
    """This rank's contiguous part of a global batch (the whole batch when not distributed)."""
    d = d or info()
    return x if not d.enabled else torch.tensor_split(x, d.world_size)[d.rank]


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum a tensor over ranks in place (no-op for one process)."""
    if info().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj):
    """Rank 0's value of a picklable object on every rank (identity for one process)."""
    if not info().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def leave_group() -> None:
    """Destroy the process group if this process joined one (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if info().enabled:
        dist.barrier()


def verify_agreement(checksum: str, what: str) -> None:
    """Fail loudly if `checksum` differs between ranks (all-gather of a short string)."""
    d = info()
    if not d.enabled:
        return
    gathered: list[str | None] = [None] * d.world_size
    dist.all_gather_object(gathered, checksum)
    if len(set(gathered)) != 1:
        raise RankDivergence(f"{what} differ between ranks (checksums {gathered}); the ranks no longer run the same "
                             "program. Check that every rank sees the same data files, seed and recipe.")


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when distributed, else the model itself."""
    d = info()
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def device_for_rank(name: str) -> torch.device:
    """'auto' -> this rank's GPU under torchrun when CUDA exists, else CPU."""
    if name == "auto" and torch.cuda.is_available():
        return torch.device("cuda", info().local_rank)
    return torch.device("cpu") if name == "auto" else torch.device(name)
