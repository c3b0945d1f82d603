"""Multi-process training on PyTorch's own engine: ``torchrun --nproc_per_node N -m igan train ...``.

The process group comes from the torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, the
rendezvous variables): NCCL on GPUs, gloo on CPUs, with a timeout on collectives so a rank that dies
takes the job down (torchrun then names the failed rank) instead of hanging the others. G and D are
wrapped in ``DistributedDataParallel``; every rank draws the same global batch order and takes its own
disjoint shard of each batch; rank 0 alone writes checkpoints, samples and metrics.

Per technique (docs/distributed.md): batch statistics (G's batch norm, VBN's live examples, MBD's
within-batch distances) are computed per rank on the rank's shard; VBN's reference batch is the same
fixed noise on every rank; historical averaging and the evaluation EMA follow parameters that DDP keeps
identical on every rank, so they stay identical too.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Dist", "setup"]

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("IGAN_DIST_TIMEOUT", "300")))


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place) and return it."""
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch of indices."""
        if not self.enabled:
            return indices
        per = indices.shape[0] // self.world
        return indices[self.rank * per:(self.rank + 1) * per]


def setup(device_name: str) -> tuple[Dist, str]:
    """Join the torchrun job if there is one; returns the process's Dist and the device to use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    else:
        device_name = "cpu"
    return Dist(rank, world, local_rank), device_name

