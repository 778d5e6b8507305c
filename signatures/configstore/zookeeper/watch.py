"""ZooKeeper watches for followers (signatures/configstore/zookeeper/store.py).

`Watched` wakes a follower when its stage's node changes, and after every
(re)connection, when the follower compares generations: kazoo drops its
watches when a connection drops, so a change made meanwhile is caught up
that way. `MemberWatch` keeps the leaves registered on a stage, from a
watch on the members' directory and one on each leaf's node.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kazoo.client import KazooState

from _trim.errors import StoreError
from signatures.configstore.changes import Changes
from signatures.configstore.members import MemberStatus, member_record
from signatures.configstore.zookeeper.ensemble import Ensemble


class Watched(Changes):
    """Woken by a watch on the stage node, and by each (re)connection (to
    compare generations: a watch may have been missed meanwhile); every
    ``recheck_s`` the follower also looks, a safety net the watch makes
    unnecessary."""

    pushes = True

    def __init__(self, zk: Ensemble, node: str, recheck_s: float):
        super().__init__(recheck_s)
        self.zk, self.node = zk, node
        self._arm = True
        self._changed = True   # look once at the start
        self._next_look = time.monotonic() + recheck_s
        zk.on_state.append(self._state_changed)

    def _state_changed(self, state) -> None:
        if state == KazooState.CONNECTED:
            self._arm = True   # kazoo drops its watches on a disconnection
            self._changed = True
            self.wake()

    def _fired(self, event) -> None:
        if event.type != "NONE":   # NONE: the connection dropped; re-armed on reconnection
            self._arm = True
            self._changed = True
            self.wake()

    def wait(self, timeout: float) -> bool:
        if self._arm:
            # Cleared before the watch is set: it may fire (and ask to be set
            # again) before the call returns, and clearing after would lose
            # that, leaving nothing but the recheck to hear of the next change.
            self._arm = False
            try:
                self.zk.call("watch the stage",
                             lambda zk: zk.exists_async(self.node, watch=self._fired))
            except StoreError:
                self._arm = True   # down: set again once the reconnection wakes us
        if not self._changed:
            self._event.wait(max(0.0, min(timeout, self._next_look - time.monotonic())))
            self._event.clear()
        if self._changed or time.monotonic() >= self._next_look:
            self._changed = False
            self._next_look = time.monotonic() + self.poll_s
            return True
        return False

    def close(self) -> None:
        super().close()
        if self._state_changed in self.zk.on_state:
            self.zk.on_state.remove(self._state_changed)


class MemberWatch:
    """The leaves registered on a stage, kept current by watches: the
    directory's children, and each leaf node's data (its endpoints)."""

    def __init__(self, zk: Ensemble, directory: str, wake: Callable[[], None]):
        self.zk, self.wake = zk, wake
        self.directory = directory
        self.records: dict[str, MemberStatus] = {}
        self._children_stale = True
        self._stale: set[str] = set()
        self._lock = threading.Lock()
        zk.on_state.append(self._state_changed)

    def _state_changed(self, state) -> None:
        if state == KazooState.CONNECTED:
            with self._lock:
                self._children_stale = True
                self._stale |= set(self.records)
            self.wake()

    def _children_fired(self, event) -> None:
        if event.type != "NONE":
            self._children_stale = True
            self.wake()

    def _member_fired(self, event) -> None:
        if event.type != "NONE" and event.path:
            with self._lock:
                self._stale.add(event.path.rsplit("/", 1)[-1])
            self.wake()

    def refresh(self) -> dict[str, MemberStatus] | None:
        """node name -> record of every leaf registered now; None while the
        ensemble cannot be asked (keep what you have)."""
        zk = self.zk
        try:
            if self._children_stale:
                self._children_stale = False
                names = zk.children(self.directory, "watch the members",
                                    watch=self._children_fired)
                if names is None:   # nobody registered yet: told when someone does
                    zk.call("watch the members",
                            lambda k: k.exists_async(self.directory, watch=self._children_fired))
                    names = []
                leaves = {n for n in names if n.startswith("leaf-")}
                with self._lock:
                    self._stale |= leaves - set(self.records)
                    for gone in set(self.records) - leaves:
                        del self.records[gone]
            with self._lock:
                stale, self._stale = self._stale, set()
            for name in sorted(stale):
                got = zk.get(f"{self.directory}/{name}", "read a member", watch=self._member_fired)
                record = member_record(got[0]) if got is not None else None
                with self._lock:
                    if record is None:
                        self.records.pop(name, None)
                    else:
                        self.records[name] = record
        except StoreError:
            with self._lock:
                self._children_stale = True
                self._stale |= set(self.records)
            return None
        return dict(self.records)

    def close(self) -> None:
        if self._state_changed in self.zk.on_state:
            self.zk.on_state.remove(self._state_changed)


__all__ = ["MemberWatch", "Watched"]
