"""Small studies run fastest on one thread.

Several threads on tiny tensors mostly wait on each other, and far worse on a shared machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .._interrupt import uninterrupted


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread; the caller's count comes back even after a Ctrl-C."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        yield
    finally:
        uninterrupted(lambda: torch.set_num_threads(before))
