"""Progress reporting hook shared by every long computation.

Library functions take ``progress: Callable[[int, int], None] | None`` and call it as
``progress(done, total)``. :func:`tqdm_progress` adapts a tqdm bar; the CLI adapts rich.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]


def tqdm_progress(bar) -> Progress:  # pragma: no cover - thin adapter
    """Wrap a ``tqdm`` bar: ``eigenpairs(op, progress=tqdm_progress(tqdm()))``."""

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update


def scaled(progress: Progress | None, offset: int, total: int) -> Progress | None:
    """A sub-task's progress mapped into a parent task's range ``[offset, offset + its total]``."""
    if progress is None:
        return None

    def update(done: int, sub_total: int) -> None:
        progress(offset + done, total)

    return update
