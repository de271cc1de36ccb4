"""Ctrl-C: long calls return what they finished, flagged, and nothing downstream mistakes it for a finished result.

A long library call (a sweep, a landscape, a range test, ...) that is interrupted returns a
partial result with ``interrupted=True`` and no verdict drawn from it, so a user in a notebook
keeps what was computed. Two rules keep that safe when calls nest:

- :func:`propagating` marks code that cannot use a partial result (a study building a report, an
  analysis calling another): inside it, :func:`partial_allowed` is False and the inner calls let
  the ``KeyboardInterrupt`` through, to be handled by whoever opened the block.
- Every Ctrl-C turned into a partial result is counted (:func:`note`), and so is every SIGINT
  while :func:`recording` is active (the CLI); :func:`count` lets a caller ask whether one
  arrived during a stretch of work, even if some inner call swallowed it.

A library call follows this pattern::

    try:
        ...  # the loop
    except KeyboardInterrupt:
        interrupted = keep_partial(finished=bool(done))  # re-raises when it may not return a part
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

_state = threading.local()
_count = [0]


def partial_allowed() -> bool:
    """Whether an interrupted call may return a partial result (False inside :func:`propagating`)."""
    return getattr(_state, "propagating", 0) == 0


@contextlib.contextmanager
def propagating() -> Iterator[None]:
    """Inside this block a Ctrl-C propagates out of every lossdoctor call as ``KeyboardInterrupt``."""
    _state.propagating = getattr(_state, "propagating", 0) + 1
    try:
        yield
    finally:
        _state.propagating -= 1


def keep_partial(finished: bool = True) -> bool:
    """Inside ``except KeyboardInterrupt``.

    Re-raise it when a partial result may not be returned (inside :func:`propagating`) or there is
    none (nothing ``finished``); otherwise note the interrupt and return True (the caller returns
    its partial result, flagged)."""
    if not partial_allowed() or not finished:
        raise  # called from an except block: re-raises the KeyboardInterrupt in flight
    note()
    return True


def note() -> None:
    """Record that a Ctrl-C was turned into a partial result."""
    _count[0] += 1


def count() -> int:
    """How many interrupts were noted or received so far (compare two readings)."""
    return _count[0]


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Count every SIGINT (and still raise ``KeyboardInterrupt`` as Python does), so the caller learns of a Ctrl-C that an inner call turned into a partial result.

    Main thread only; a no-op elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        _count[0] += 1
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def was_interrupted(result: Any) -> bool:
    """True when ``result`` (or any result nested in its ``to_dict()``) is flagged interrupted."""

    def scan(value: Any) -> bool:
        if isinstance(value, dict):
            return value.get("interrupted") is True or any(scan(v) for v in value.values())
        if isinstance(value, list):
            return any(scan(v) for v in value)
        return False

    if getattr(result, "interrupted", False) is True:
        return True
    to_dict = getattr(result, "to_dict", None)
    return scan(to_dict()) if callable(to_dict) else False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then raise it as usual: restoring the user's model, optimizer or RNG must never be cut in half.

    Main thread only; a no-op elsewhere or when SIGINT is not handled by Python."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous):
        yield
        return
    held: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            previous(*held[0])  # raises KeyboardInterrupt (and is counted by recording())


def uninterrupted(restore: Callable[[], object]) -> None:
    """Run an idempotent ``restore`` to the end whatever Ctrl-C does, then raise a Ctrl-C it met.

    A Ctrl-C landing before the signal is held (the first bytecodes of the call) restarts the
    restore; one held inside it is raised once it is done."""
    pending: KeyboardInterrupt | None = None
    while True:
        try:
            with deferred():
                restore()
            break
        except KeyboardInterrupt as interrupt:  # restoring is idempotent: do it again
            pending = interrupt
    if pending is not None:
        raise pending
