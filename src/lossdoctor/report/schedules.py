"""Figure of a learning-rate schedule (for ``lossdoctor schedule --plot``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .figures import new_figure, save_new

POINTS = 2000  # a long schedule is drawn from this many steps, its phase ends included


def schedule_figure(
    lr_at: Callable[[list[int]], list[float]],
    steps: int,
    path: Path,
    *,
    title: str = "learning-rate schedule",
    marks: tuple[int, ...] = (),
) -> Path:
    """The schedule ``lr_at(steps) -> lrs`` over ``steps`` updates, drawn from at most :data:`POINTS` steps (plus ``marks``, e.g. the end of the warm-up); returns the file written."""
    xs = sorted(
        {int(x) for x in np.linspace(0, steps - 1, min(steps, POINTS))}
        | {m for m in marks if 0 <= m < steps}
    )
    fig, (ax,) = new_figure(1)
    ax.plot(xs, lr_at(xs), color="C0")
    ax.set_xlabel("step (update)")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    return save_new(fig, path)
