"""torchrun support: one process per device, DDP, rank 0 writes.

Under ``torchrun --nproc_per_node N`` the environment carries ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; the process group uses NCCL on GPUs and gloo on CPUs, and ``cuda`` means
``cuda:LOCAL_RANK``. Without torchrun everything here is a no-op for a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "agree", "start", "stop"]


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.size > 1

    def barrier(self) -> None:
        """Wait for every rank (a no-op for one process)."""
        if self.distributed:
            dist.barrier()


def start(device: str) -> tuple[World, torch.device]:
    """Join the process group when launched by torchrun; return the world and this rank's
    device (``auto``: CUDA when available, else CPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: CUDA is not available on this machine")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank if size > 1 else 0)
        torch.cuda.set_device(resolved)
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=size)
    return World(rank, size, local_rank), resolved


def stop(world: World) -> None:
    """Leave the process group."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def agree(world: World, value: float) -> list[float]:
    """``value`` of every rank, in rank order (e.g. a checksum of the weights)."""
    if not world.distributed:
        return [value]
    gathered: list[float] = [0.0] * world.size
    dist.all_gather_object(gathered, value)
    return gathered
