"""A single-slot handoff between two threads: the newest value put wins, and
each value is taken at most once.

The follower thread and the I/O loop share nothing else: targets go one way
(leafproc/follow.py -> leafproc/table.py), heartbeat records the other. Only
the newest of either matters, so a slow taker skips stale values instead of
working through a backlog of them.
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    def __init__(self) -> None:
        self._value: T | None = None
        self._lock = threading.Lock()

    def put(self, value: T) -> None:
        with self._lock:
            self._value = value

    def take(self) -> T | None:
        """The value put since the last take, or None."""
        if self._value is None:  # the loop asks on every turn: skip the lock when empty
            return None
        with self._lock:
            value, self._value = self._value, None
        return value


__all__ = ["Handoff"]
