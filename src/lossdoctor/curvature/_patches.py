"""Torch functions replaced while a product's graphs are built, safely across threads and Ctrl-C.

Two analyses can build graphs at once (two threads, or one call inside another). Saving and
restoring per caller would let the first to leave put back the original under the second, and the
second to leave then install the first's replacement for good. Here the first caller in installs
the replacements, built from the true originals, and the last one out puts the originals back; a
Ctrl-C can land anywhere without leaving a count or a function behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .. import _interrupt

_lock = threading.Lock()
_users: dict[tuple[int, str], int] = {}
_originals: dict[tuple[int, str], Any] = {}


@contextlib.contextmanager
def patched(namespace: Any, factories: Mapping[str, Callable[[Any], Any]]) -> Iterator[None]:
    """Replace ``namespace.<name>`` by ``factories[name](original)`` while any caller is inside."""
    keys = [((id(namespace), name), name) for name in factories]
    inside = [False]

    def enter() -> None:
        with _lock:
            for key, name in keys:
                if _users.get(key, 0) == 0:
                    _originals[key] = getattr(namespace, name)
                    setattr(namespace, name, factories[name](_originals[key]))
                _users[key] = _users.get(key, 0) + 1
            inside[0] = True

    def leave() -> None:  # idempotent, for _interrupt.uninterrupted
        with _lock:
            if not inside[0]:
                return
            for key, name in keys:
                _users[key] -= 1
                if _users[key] == 0:
                    setattr(namespace, name, _originals.pop(key))
                    del _users[key]
            inside[0] = False

    try:
        with _interrupt.deferred():
            enter()
        yield
    finally:
        _interrupt.uninterrupted(leave)
