"""Devices and several processes (``torchrun``): who am I, talk to the others, wrap in DDP.

A single process is the case of one rank: every helper here is then a no-op, so the
training loop has one code path.  ``torchrun --nproc_per_node N -m toolbox run RECIPE``
sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; the process group is NCCL on CUDA and
gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from toolbox.errors import ToolboxError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_ranks() -> Ranks:
    """What ``torchrun`` (or any launcher that sets the usual variables) asked for."""
    try:
        return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as error:
        raise ToolboxError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({error})") from error


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ToolboxError("train.device is 'cuda' but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[Ranks, torch.device]:
    """Join the process group (once) and pick this rank's device."""
    ranks = launched_ranks()
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if ranks.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks, device


def shutdown(completed: bool = False) -> None:
    """Leave the process group.  ``completed``: every rank finished its work, so they first
    meet at a barrier, and none tears gloo down while another still has a collective in
    flight (seen as rank 1 aborting at exit, "terminate called without an active
    exception").  After an error there is no barrier: the other ranks may never reach it."""
    if dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_from_main(value):
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class FailedOnMainRank(ToolboxError):
    """Raised on the other ranks when rank 0 hit a user error (rank 0 alone reports it)."""


def run_on_main(ranks: Ranks, make):
    """``make()`` on rank 0, its result (or its user error) handed to every rank."""
    result, error = None, None
    if ranks.is_main:
        try:
            result = make()
        except ToolboxError as caught:
            error = caught
    outcome = broadcast_from_main((result, str(error) if error else None))
    if error is not None:
        raise error
    if outcome[1] is not None:
        raise FailedOnMainRank(outcome[1])
    return outcome[0]


def gather_to_all(value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def mean_over_ranks(terms: dict[str, float]) -> dict[str, float]:
    """Loss terms averaged over ranks, so that every rank logs and checks the same numbers."""
    if not dist.is_initialized() or not terms:
        return terms
    keys = sorted(terms)
    values = torch.tensor([terms[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return dict(zip(keys, values.tolist()))


def wrap_ddp(module: torch.nn.Module, device: torch.device,
             find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when there are several ranks, else itself.

    Buffers (BatchNorm running statistics) are broadcast from rank 0 at every forward,
    so that validation on rank 0 sees the statistics all ranks share.
    """
    if not dist.is_initialized() or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP wrapper (its state dict has no ``module.`` prefix)."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


def rank_slice(items: list, ranks: Ranks) -> list:
    """This rank's share of ``items``: every ``world_size``-th one, starting at ``rank``."""
    return items[ranks.rank::ranks.world_size]
