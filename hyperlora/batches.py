"""A deterministic, resumable stream of training batches.

Epoch e visits the records in the permutation drawn from ``seed + e``; the
stream's whole state is ``(epoch, position)``, so a resumed run sees exactly the
batches the uninterrupted run would have seen. With several ranks, each global
batch is split by stride (rank r takes rows r, r + world, …): every rank draws
the same permutation and no rank needs to talk to another about data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import torch

__all__ = ["BatchStream"]

T = TypeVar("T")


class BatchStream(Generic[T]):
    def __init__(self, items: Sequence[T], batch_size: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if batch_size < world or batch_size % world:
            raise ValueError(f"The global batch size {batch_size} must be a multiple of the {world} processes.")
        if len(items) < batch_size:
            raise ValueError(f"{len(items)} training examples are fewer than one batch of {batch_size}.")
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.items), generator=gen).tolist()

    def next(self) -> list[T]:
        """This rank's share of the next global batch (the incomplete tail of an epoch is dropped)."""
        if self.position + self.batch_size > len(self.items):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        indices = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return [self.items[i] for i in indices[self.rank :: self.world]]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
