"""Samplers that keep evaluation exact in DDP and make training epochs reproducible across ranks and workers.

torch's DistributedSampler pads evaluation sets with duplicates so every rank gets the same count, which changes
AUROC/PRO; `UnrepeatedDistributedSampler` gives each sample to exactly one rank instead (counts may differ by one).
Training walks the epoch schedule of `TrainMixDataset` with `EpochScheduleSampler`, which yields (epoch, index)
keys: the dataset then needs no per-epoch state, so persistent workers stay in step with the epoch.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import Sampler


def world_size_and_rank() -> tuple[int, int]:
    """(world size, rank) of the initialised torch.distributed process group, else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _check_rank(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"invalid distributed sampler setting: rank {rank} of {num_replicas} replicas")


class UnrepeatedDistributedSampler(Sampler[int]):
    """Indices rank, rank + R, rank + 2R, ... of range(length): every sample exactly once over all ranks,
    no padding, in a fixed order (ranks may get one sample more or less than others)."""

    def __init__(self, length: int, num_replicas: int, rank: int) -> None:
        _check_rank(num_replicas, rank)
        self.length, self.num_replicas, self.rank = int(length), int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))


class EpochScheduleSampler(Sampler[tuple[int, int]]):
    """(epoch, position) keys over an epoch schedule of `length` positions, split between ranks.

    The schedule itself is shuffled per epoch by the dataset, so positions are walked in order. Training ranks must
    run the same number of steps, so like DistributedSampler the positions wrap around to an equal share per rank.
    Lightning calls `set_epoch` before every training epoch; standalone users call it themselves. `skip` leaves out
    the first keys of one epoch: a run resumed in the middle of that epoch continues where it stopped.
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        _check_rank(num_replicas, rank)
        if length < 1:
            raise ValueError("EpochScheduleSampler needs a schedule of at least one position")
        self.length, self.num_replicas, self.rank = int(length), int(num_replicas), int(rank)
        self.epoch = 0
        self._skip = (0, 0)  # (epoch, keys of this rank to leave out at its start)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, epoch: int, count: int) -> None:
        """Leave out this rank's first `count` keys of epoch `epoch` (those its batches already consumed)."""
        self._skip = (int(epoch), int(count))

    def __len__(self) -> int:
        return -(-self.length // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        total = len(self) * self.num_replicas
        skipped = self._skip[1] if self._skip[0] == self.epoch else 0
        for position in range(self.rank + skipped * self.num_replicas, total, self.num_replicas):
            yield self.epoch, position % self.length
