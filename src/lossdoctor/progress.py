"""Progress reporting hook shared by every long computation.

Library functions take ``progress: Callable[[int, int], None] | None`` and call it as
``progress(done, total)``. :func:`tqdm_progress` adapts a tqdm bar; the CLI adapts rich.
Public long calls are decorated with :func:`with_progress`: there ``progress=True`` draws a bar
on stderr, and the default ``"auto"`` draws one on a terminal once the call has run for two
seconds (so short calls stay silent); bars finish at 100%.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, cast

import torch

from ._interrupt import uninterrupted

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


# -- bars drawn by the library (progress=True, and "auto" on long calls) ----------------------------
AUTO_DELAY = 2.0  # "auto": a bar appears once a call has run this long, on a terminal only
REDRAW = 0.1  # seconds between redraws
_inside = contextvars.ContextVar("lossdoctor_progress_inside", default=False)


class TextBar:
    """``progress(done, total)`` drawn as one line on stderr, redrawn in place.

    :meth:`close` finishes it at 100% (a call that converged early did all the work it needed) or
    marks it interrupted."""

    def __init__(
        self, description: str, *, delay: float = 0.0, stream: TextIO | None = None, width: int = 30
    ) -> None:
        self.description, self.delay, self.width = description, delay, width
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.done, self.total = 0, 0
        self.drawn = False
        self._last = -math.inf

    def __call__(self, done: int, total: int) -> None:
        """Record progress and redraw the bar (at most every ``REDRAW`` seconds, after ``delay``)."""
        self.done, self.total = int(done), int(total)
        now = time.perf_counter()
        if now - self.start >= self.delay and now - self._last >= REDRAW:
            self._draw(now)

    def _draw(self, now: float, suffix: str = "") -> None:
        total = max(self.total, 1)
        filled = min(self.width, int(self.width * self.done / total))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r{self.description} [{bar}] {self.done}/{self.total} {now - self.start:.1f}s{suffix}"
        )
        self.stream.flush()
        self.drawn, self._last = True, now

    def close(self, finished: bool = True) -> None:
        """End the line: at 100% when ``finished`` (the total becomes what was done), else flagged as interrupted.

        Nothing is written for a bar that never appeared."""
        if not self.drawn and (self.delay > 0 or self.total == 0):
            return
        if finished:
            self.total = self.done = max(self.done, 1) if self.total == 0 else self.done
        self._draw(time.perf_counter(), "" if finished else " (interrupted)")
        self.stream.write("\n")
        self.stream.flush()


def resolve(progress: Any, description: str) -> tuple[Progress | None, TextBar | None]:
    """``progress`` as a callback.

    ``True`` a :class:`TextBar`; ``"auto"`` a bar that appears after :data:`AUTO_DELAY` seconds on a
    terminal, outside other lossdoctor calls' bars; ``None``/``False`` none; a callable itself."""
    if progress is None or progress is False:
        return None, None
    if progress is True:
        bar = TextBar(description)
        return bar, bar
    if isinstance(progress, str) and progress == "auto":
        stream = sys.stderr
        if _inside.get() or stream is None or not getattr(stream, "isatty", lambda: False)():
            return None, None
        bar = TextBar(description, delay=AUTO_DELAY)
        return bar, bar
    if not callable(progress) or isinstance(progress, type):
        raise TypeError(
            f"progress must be True (draw a bar), False/None (none), 'auto' (a bar on long calls) or "
            f"a function called as progress(done, total); got {type(progress).__name__} "
            f"{progress!r:.40}."
        )
    return progress, None


def as_callback(progress: object) -> Progress | None:
    """Inside a :func:`with_progress` function.

    The callback (or None) the decorator passed in place of ``True``/``"auto"``/``False``, typed as
    such."""
    return cast(Progress, progress) if callable(progress) else None


def with_progress(description: str) -> Callable:
    """Decorate a public long call whose ``progress`` argument may be ``True``, ``False``, ``None``, ``"auto"`` or a callback: the body always gets a callback or ``None``; a bar the library draws is finished at 100% when the call returns (flagged when its result says ``interrupted``), and calls made inside it draw no bars of their own."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return fn(*args, **kwargs)  # let the call raise its own error
            given = bound.arguments.get("progress", signature.parameters["progress"].default)
            callback, bar = resolve(given, description)
            bound.arguments["progress"] = callback
            token = _inside.set(True)
            grad_enabled, threads = torch.is_grad_enabled(), torch.get_num_threads()
            try:
                result = fn(*bound.args, **bound.kwargs)
            except BaseException:
                if bar is not None:
                    bar.close(finished=False)
                raise
            finally:
                _inside.reset(token)
                # A Ctrl-C inside torch.no_grad()'s own __enter__/__exit__ skips its restore and
                # leaves autograd off for the rest of the user's session.
                if torch.is_grad_enabled() != grad_enabled:
                    uninterrupted(lambda: torch.set_grad_enabled(grad_enabled))
                # Likewise a study's one-thread block cut short before its restore.
                if torch.get_num_threads() != threads:
                    uninterrupted(lambda: torch.set_num_threads(threads))
            if bar is not None:
                bar.close(finished=not getattr(result, "interrupted", False))
            return result

        return wrapper

    return decorate
