"""Deterministic, resumable batches: the data position is just a count of micro-batches.

Micro-batch ``m`` of a run is a pure function of (seed, m, rank): the epoch is ``m // per_epoch``,
the order within an epoch is a permutation drawn from ``seed`` and the epoch, and every sample
carries its own ``sample_seed`` so random augmentation is reproducible too. Resuming therefore
needs only the step count, and many ranks read disjoint slices of the same permutation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

SampleKey = tuple[int, int]  # (dataset index, seed for that sample's random transforms)


class ResumableBatchSampler:
    """Yields lists of ``(index, sample_seed)`` keys, forever, from micro-batch ``start`` on."""

    def __init__(
        self, n: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if n < batch_size * world_size:
            raise ValueError(
                f"dataset has {n} items, fewer than one batch ({batch_size} x {world_size} processes); "
                "lower --batch-size or add data"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self.per_epoch = n // (batch_size * world_size)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        m = self.start
        epoch, perm = -1, None
        while True:
            e, j = divmod(m, self.per_epoch)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            lo = (j * self.world_size + self.rank) * self.batch_size
            yield [(i, _mix(self.seed, epoch, i)) for i in perm[lo : lo + self.batch_size].tolist()]
            m += 1


def _mix(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed per (run seed, epoch, sample), stable across Python versions and processes."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    x ^= x >> 32
    return x & (2**63 - 1)
