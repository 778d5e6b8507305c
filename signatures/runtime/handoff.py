"""A single-slot handoff between two threads: the newest value put wins, and
each value is taken at most once.

A process following a stage of the config store runs a follower thread and a
serving loop that share nothing else: what to serve goes one way (the root's
compiled config, the leaf's model target), the heartbeat record the other.
Only the newest of either matters, so a slow taker skips stale values
instead of working through a backlog of them.
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
