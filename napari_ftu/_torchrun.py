"""Where one process stands in a torchrun job: its rank, its share of the work, its device."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

# Ranks meet at the end, when each has done all its slides: that can be hours apart, far longer
# than torch's 30-minute default before a collective gives up.
GATHER_TIMEOUT = dt.timedelta(days=7)


class Team:
    """The ranks of a torchrun job (gloo on CPU), or a team of one without torchrun.

    Used as a context manager: joins the process group on entry and leaves it on exit.
    """

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self.rank = int(env.get("RANK", 0))
        self.world = int(env.get("WORLD_SIZE", 1))
        self.local_rank = int(env.get("LOCAL_RANK", 0))

    def __enter__(self) -> Team:
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if kind is None:  # no rank leaves while another still talks to it (gloo aborts)
                dist.barrier()
            dist.destroy_process_group()

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: r, r + N, r + 2N, ..."""
        return list(items[self.rank :: self.world])

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank; a barrier as well."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered


def rank_device(device: str, local_rank: int, gpu_count: int | None = None) -> str:
    """The device of one rank: a bare ``cuda`` becomes ``cuda:<local_rank>``, so that the ranks
    of a node spread over its GPUs (more ranks than GPUs share them in turn); ``cpu``, ``cuda:N``
    and anything else is kept as given. ``gpu_count`` defaults to what torch sees."""
    if device != "cuda":
        return device
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count()
    return f"cuda:{local_rank % gpu_count}" if gpu_count else device
