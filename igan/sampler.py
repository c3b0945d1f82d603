"""Batches drawn by index from a dataset held on the training device (no DataLoader workers).

One epoch is one pass over the (unlabelled) training set in batches of ``batch_size`` (the last
partial batch is dropped, as the reference code does). For semi-supervised training a class-balanced
labelled subset is tiled by concatenating fresh permutations, so every step sees a full labelled batch
(paper-notes §2.2), and an independent second permutation supplies the real batch that the generator's
feature-matching loss compares against (the reference's ``trainx_unl2``).

All randomness comes from one ``torch.Generator`` whose state is checkpointed with the permutations,
so a resumed run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch", "BatchSampler"]


@dataclass
class Batch:
    unlabeled: torch.Tensor  # int64 indices into the training set, on the data device
    labeled: torch.Tensor | None = None
    generator_real: torch.Tensor | None = None


class _Stream:
    """An endless stream of indices from ``pool``, reshuffled each pass."""

    def __init__(self, pool: torch.Tensor) -> None:
        self.pool = pool
        self.perm = pool[:0]
        self.pos = 0

    def take(self, n: int, gen: torch.Generator, tile: bool) -> torch.Tensor:
        if self.pos + n > self.perm.numel():
            if tile:  # keep the rest and append fresh permutations (labelled-set tiling)
                rest = self.perm[self.pos:]
                while rest.numel() < n:
                    rest = torch.cat([rest, self._shuffled(gen)])
                self.perm, self.pos = rest, 0
            else:  # drop the partial batch and start a new epoch
                self.perm, self.pos = self._shuffled(gen), 0
        out = self.perm[self.pos:self.pos + n]
        self.pos += n
        return out

    def _shuffled(self, gen: torch.Generator) -> torch.Tensor:
        order = torch.randperm(self.pool.numel(), generator=gen)
        if self.pool.is_cuda:  # from pinned memory the copy does not wait for the GPU (a step never syncs)
            return self.pool[order.pin_memory().to(self.pool.device, non_blocking=True)]
        return self.pool[order]


class BatchSampler:
    def __init__(self, n: int, batch_size: int, device: torch.device | str, seed: int) -> None:
        if batch_size > n:
            from igan.errors import UsageError

            raise UsageError(f"batch size {batch_size} is larger than the training set ({n} images)",
                             hint=f"use --batch-size {n} or less")
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.unlabeled = _Stream(torch.arange(n, device=device))
        self.labeled: _Stream | None = None
        self.generator_real: _Stream | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def use_labeled(self, indices: torch.Tensor) -> None:
        self.labeled = _Stream(indices.to(self.unlabeled.pool.device))

    def use_generator_real(self) -> None:
        self.generator_real = _Stream(self.unlabeled.pool)

    def next(self) -> Batch:
        b = self.batch_size
        return Batch(
            self.unlabeled.take(b, self.gen, tile=False),
            self.labeled.take(b, self.gen, tile=True) if self.labeled is not None else None,
            self.generator_real.take(b, self.gen, tile=False) if self.generator_real is not None else None)

    # checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"gen": self.gen.get_state()}
        for name in ("unlabeled", "labeled", "generator_real"):
            stream = getattr(self, name)
            if stream is not None:
                state[f"{name}.pool"] = stream.pool
                state[f"{name}.perm"] = stream.perm
                state[f"{name}.pos"] = torch.tensor(stream.pos)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["gen"].cpu())
        for name in ("unlabeled", "labeled", "generator_real"):
            if f"{name}.pool" in state:
                stream = _Stream(state[f"{name}.pool"].to(self.unlabeled.pool.device))
                stream.perm = state[f"{name}.perm"].to(stream.pool.device)
                stream.pos = int(state[f"{name}.pos"])
                setattr(self, name, stream)
