"""Which training samples each rank draws, batch after batch (a pure function of the step)."""

from __future__ import annotations

import functools

import torch

from toolbox.distributed import Ranks
from toolbox.rng import seed_everything


def batch_indices(batch_size: int, start_batch: int, total_batches: int, ranks: Ranks) -> list[int]:
    """The sample indices this rank draws, batch after batch.

    Sample i is a pure function of (seed, i).  Global batch b is samples
    [b * world * size, (b + 1) * world * size), of which rank r takes the r-th slice: so a
    resumed run sees the samples an uninterrupted one would, and N ranks with batch B see
    what one process with batch N * B sees.
    """
    world, size = ranks.world_size, batch_size
    return [(b * world + ranks.rank) * size + j for b in range(start_batch, total_batches) for j in range(size)]


def make_loader(dataset, batch_size: int, indices: list[int], num_workers: int = 0, seed: int = 0):
    """A DataLoader over ``indices`` of ``dataset`` in that order (workers seeded)."""
    subset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        drop_last=True, persistent_workers=False,
        worker_init_fn=functools.partial(_seed_worker, seed),
    )


def _seed_worker(seed: int, worker: int) -> None:
    seed_everything(seed + worker)
