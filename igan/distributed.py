"""Multi-process training on PyTorch's own engine: ``torchrun --nproc_per_node N -m igan train ...``.

The process group comes from the torchrun environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, the
rendezvous variables), read and checked in one place (``job``): a value that is not a number, ``RANK``
without ``WORLD_SIZE`` (left over from a torchrun job: the process would train but print nothing) or a
rank outside the world is a usage error, not a traceback or a silent run. The process group uses NCCL on GPUs, gloo on CPUs, with a timeout on collectives so a rank that dies
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

from igan.errors import UsageError

__all__ = ["Dist", "setup", "job", "collective_timeout"]

DEFAULT_TIMEOUT_S = 300
_TORCHRUN_HINT = "start distributed runs with torchrun (it sets WORLD_SIZE, RANK and LOCAL_RANK), or unset them"


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


def _env_int(name: str, low: int, hint: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low:
        raise UsageError(f"{name}={raw!r} is not a whole number >= {low}", hint=hint)
    return value


def collective_timeout() -> datetime.timedelta:
    """Timeout of collectives: ``IGAN_DIST_TIMEOUT`` seconds (default 300)."""
    seconds = _env_int("IGAN_DIST_TIMEOUT", 1, f"unset it for the default ({DEFAULT_TIMEOUT_S} s), or give "
                                               "seconds, e.g. IGAN_DIST_TIMEOUT=600")
    return datetime.timedelta(seconds=seconds or DEFAULT_TIMEOUT_S)


def job() -> Dist:
    """This process's place in the torchrun job, from its environment (rank 0 of 1 outside one)."""
    world = _env_int("WORLD_SIZE", 1, _TORCHRUN_HINT)
    rank = _env_int("RANK", 0, _TORCHRUN_HINT)
    if world is None or world == 1:
        if rank:
            raise UsageError(f"RANK={rank} is set, but {'WORLD_SIZE is not' if world is None else 'WORLD_SIZE=1'}: "
                             "this process is not part of a distributed job, and a rank other than 0 would train "
                             "without printing or writing anything",
                             hint="unset RANK (and LOCAL_RANK), left over from a torchrun job, or start the job "
                                  "with torchrun --nproc_per_node N")
        return Dist()
    if rank is None:
        raise UsageError(f"WORLD_SIZE={world} is set, but RANK is not", hint=_TORCHRUN_HINT)
    if rank >= world:
        raise UsageError(f"RANK={rank} is outside the job (WORLD_SIZE={world}: ranks 0..{world - 1})",
                         hint=_TORCHRUN_HINT)
    return Dist(rank, world, _env_int("LOCAL_RANK", 0, _TORCHRUN_HINT) or 0)


def setup(device_name: str) -> tuple[Dist, str]:
    """Join the torchrun job if there is one; returns the process's Dist and the device to use."""
    found = job()
    timeout = collective_timeout()  # checked on one process too: a bad value must not wait for torchrun
    if not found.enabled:
        return found, device_name
    rank, world, local_rank = found.rank, found.world, found.local_rank
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    else:
        device_name = "cpu"
    return Dist(rank, world, local_rank), device_name

