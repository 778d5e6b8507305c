"""Two small pieces both config store backends use: a `Change` of a stage as
the policy computed it (signatures/configstore/stages.py), with who made it
(`audit_fields`), and what a follower waits on between two looks at its
stage (`Changes`: a directory store is polled; signatures/configstore/zookeeper/watch.py has
ZooKeeper's, woken by a watch)."""
from __future__ import annotations

import dataclasses
import datetime
import getpass
import os
import socket
import threading


def audit_fields() -> dict:
    """Who made a change, for its audit entry."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return {"time": now(), "user": user, "host": socket.gethostname(), "pid": os.getpid()}


@dataclasses.dataclass
class Change:
    """A change of one stage, as the policy computed it from what it read."""

    stage: str
    old: dict
    new: dict
    event: dict
    result: object = None


class Changes:
    """What a follower waits on between two looks at its stage. This one
    polls: `wait` returns after ``poll_s`` (or at once after `wake`)."""

    pushes = False   # True where the store itself says when the stage changed

    def __init__(self, poll_s: float):
        self.poll_s = poll_s
        self._event = threading.Event()

    def wake(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout``; True when the stage may have changed (here:
        always, the caller looks)."""
        self._event.wait(min(timeout, self.poll_s))
        self._event.clear()
        return True

    def close(self) -> None:
        self._event.set()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = ["Change", "Changes", "audit_fields", "now"]
