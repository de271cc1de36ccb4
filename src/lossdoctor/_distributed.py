"""Whether a torch.distributed process group is running, and this process's place in it.

The one check the curvature engine, the sweep and the command line share."""

from __future__ import annotations

import torch.distributed as dist


def process_group_active() -> bool:
    """True inside an initialized process group (torchrun), False otherwise (or without support)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size; ``(0, 1)`` outside a process group."""
    if process_group_active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
