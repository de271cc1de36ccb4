"""Figure of a learning-rate schedule (for ``lossdoctor schedule --plot``)."""

from __future__ import annotations

from pathlib import Path

from .figures import new_figure, save


def schedule_figure(lrs: list[float], path: Path, *, title: str = "learning-rate schedule") -> Path:
    fig, (ax,) = new_figure(1)
    ax.plot(range(len(lrs)), lrs, color="C0")
    ax.set_xlabel("step (update)")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    save(fig, path.parent, path.name)
    return path
