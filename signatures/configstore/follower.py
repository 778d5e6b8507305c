"""A process following one stage of the staged config store, on a thread of
its own: what a root and a leaf share. A subclass says what the process
makes of a stage (a root: its compiled config, rootproc/rollout/follower.py;
a leaf: the versions it serves, leafproc/follower.py).

`StageFollower` owns a thread and what only that thread touches: the store,
the stage's last stamp, the generation of what it last handed over, its
error count. The thread waits for the stage to change (a directory store: a
``stat`` every `FOLLOW_POLL_S`; ZooKeeper: a watch on the stage's node, a
look after every reconnection that compares generations, so a change missed
while disconnected is caught up, and one every `FOLLOW_RECHECK_S` in case a
watch was lost), reads the new record and its bundle, and has the process
build what it installs from them (`on_stage`, off the serving loop); that
goes to the loop through a single-slot handoff, ``updates``
(signatures/runtime/handoff.py).

A stage the process cannot use is logged, counted in the process's
``errors`` counter and shown in its heartbeat, and ignored: the process
keeps serving what it served, and the same broken state is reported once,
not once per look. Such a state is a record the store reports lost,
unreadable or corrupt (signatures/configstore/stage_state.py), one that reads as never
written although the process ran a generation of it (the audit log gone
too), or what `on_stage` refuses. A store that cannot be reached is not: the
process serves what it installed, and the thread looks again once the store
answers.

Heartbeats go the other way: the loop builds the member's `MemberStatus`
from state it owns and hands it over (``records``); the thread adds its own
fields (config errors, the last one) and writes it to the store, after
publishing the feature schema the process runs, if it has one (once). With
``heartbeat_s`` the thread writes the last record that often (a leaf: its
loop hands one over only when what it serves changes); without, only what
the loop hands over (a root's loop does every `HEARTBEAT_S`, so a root whose
loop hangs goes stale). Where members are ephemeral (ZooKeeper) it writes on
every turn: the store writes only changes, and what a new session lost.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Generic, TypeVar

from _trim.errors import StoreError
from signatures.bundle import Bundle

# The factory is the package's; the follower is not imported by the package, so no circle.
from signatures.configstore import open_config_store
from signatures.configstore.errors import ConfigStoreUnavailable
from signatures.configstore.members import FOLLOW_POLL_S, FOLLOW_RECHECK_S, MemberStatus
from signatures.runtime.handoff import Handoff

T = TypeVar("T")
Follower = TypeVar("Follower", bound="StageFollower[Any]")
STOP_JOIN_S = 5.0   # how long `stop` waits for the thread to finish


class StageFollower(Generic[T]):
    """Follows ``stage`` of the store at ``address``, handing what `on_stage`
    makes of each new state to the serving loop (``updates``) and writing
    the member's heartbeat (``records``, `post_heartbeat`)."""

    log = logging.getLogger("trimmer.follower")   # the process's logger
    kind = "stage follower"   # the thread, in its name and when it fails
    ran = "this process ran"  # the error for a stage that reads as never written

    def __init__(self, address: str, stage: str, *, who: str, errors,
                 generation: int | None = None, record: MemberStatus | None = None,
                 schema=None, poll_s: float = FOLLOW_POLL_S,
                 recheck_s: float = FOLLOW_RECHECK_S, heartbeat_s: float | None = None,
                 settings=None, join_s: float = STOP_JOIN_S):
        self.who = who           # how log lines name the process ("root-0", "leaf leaf-1")
        self.errors = errors     # the process's config errors counter
        self.schema = schema     # published to the store before the first heartbeat
        self.stage = stage
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.join_s = join_s
        self.store = open_config_store(address, settings=settings)
        # The generation of what was handed over last, or that the process
        # started on: the stage as it is now counts as seen then.
        self.generation = generation
        self._stamp = _UNKNOWN if generation is None else self._look()
        self.last_error: str | None = None
        self.error_count = 0
        self.changes = self.store.changes(
            stage, recheck_s if self.store.ephemeral_members else poll_s)
        self.updates: Handoff[T] = Handoff()               # to the loop
        self.records: Handoff[MemberStatus] = Handoff()    # from the loop
        self._record = record   # the last record, written again when due
        self._next_beat = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.kind.replace(" ", "-"),
                                        daemon=True)

    # -- what a process makes of its stage -----------------------------------------

    def on_stage(self, generation: int, state: dict, bundle: Bundle | None) -> T:
        """What the process installs for ``generation`` of the stage (its
        record ``state``, the active ``bundle`` if it has one); raises when
        the process cannot use it. Runs on the follower thread; what it
        returns is handed over."""
        raise NotImplementedError

    def describe_problem(self, error: str) -> str:
        """The log line (after the process's name) for a stage it cannot use."""
        return f"cannot use stage {self.stage} of {self.store.address}: {error}"

    def heartbeat_record(self, record: MemberStatus) -> MemberStatus:
        """The loop's record as written: with the fields only this thread knows."""
        return dataclasses.replace(record, config_errors=self.error_count,
                                   last_error=self.last_error)

    def after_look(self) -> None:
        """Called on every turn of the thread, after a look at the stage."""

    def release(self) -> None:
        """Let go of what the subclass holds on the store, before it closes."""

    # -- the process's side ----------------------------------------------------------

    def start(self: Follower) -> Follower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.changes.close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.join_s)
        self.release()
        self.store.close()   # a ZooKeeper member node goes at once

    def post_heartbeat(self, record: MemberStatus) -> None:
        """The member's record, built on the loop; written at once by the thread."""
        self.records.put(record)
        self.changes.wake()

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            changed = self.changes.wait(self.poll_s)
            if self._stop.is_set():
                break
            try:
                if changed:
                    self.poll()
                self.after_look()
            except Exception:  # a bug here must not stop the following
                self.log.exception("%s: %s", self.who, self.kind)
            self._beat()

    def _look(self):
        try:
            return self.store.stage_stamp(self.stage)
        except ConfigStoreUnavailable:
            return _UNKNOWN

    def poll(self, raise_errors: bool = False) -> None:
        """Look at the stage and hand over what `on_stage` makes of a new
        state. ``raise_errors``: raise what would be counted and logged, and
        a store that does not answer (a process that cannot start on it)."""
        try:
            stamp = self.store.stage_stamp(self.stage)
        except ConfigStoreUnavailable:
            if raise_errors:
                raise
            return   # looked at again once the store answers
        if stamp == self._stamp:
            return
        # Recorded before reading: a change landing between the two is seen
        # again next time, and an unchanged broken state is reported once.
        self._stamp = stamp
        try:
            state = self.store.state(self.stage)
            generation = int(state["generation"])
            if generation == self.generation:
                self.last_error = None
                return
            if self.generation and 0 < generation < self.generation:
                raise StoreError(f"stage {self.stage}'s generation went backwards: {generation} "
                                 f"after {self.generation} (a stale or forged record): refused; "
                                 "a deploy or rollback writes a newer one")
            if generation == 0 and self.generation:   # the audit log gone too
                raise StoreError(f"stage {self.stage} reads as never written, but {self.ran} "
                                 f"its generation {self.generation}: the stage record is missing")
            bundle = self.store.bundle(state["bundle"]) if state.get("bundle") else None
            made = self.on_stage(generation, state, bundle)
        except ConfigStoreUnavailable:
            if raise_errors:
                raise
            self._stamp = _UNKNOWN   # read it all again once the store answers
            return
        except Exception as exc:
            if raise_errors:
                raise
            self.errors.inc()
            self.error_count += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.log.error("%s: %s", self.who, self.describe_problem(self.last_error))
            return
        self.last_error = None
        self.generation = generation
        self.updates.put(made)

    def _beat(self) -> None:
        posted = self.records.take()
        if posted is not None:
            self._record = posted
        now = time.monotonic()
        due = posted is not None if self.heartbeat_s is None else now >= self._next_beat
        # A store of ephemeral members writes only changes (and what a new
        # session lost): told at once, roots link to a leaf sooner.
        if self._record is not None and (due or self.store.ephemeral_members):
            if self.heartbeat_s is not None:
                self._next_beat = now + self.heartbeat_s
            self.write_heartbeat(self._record)

    def write_heartbeat(self, record: MemberStatus) -> None:
        record = self.heartbeat_record(record)
        try:
            if self.schema is not None:
                self.store.publish_schema(self.schema)
                self.schema = None
            self.store.heartbeat(self.stage, record)
        except ConfigStoreUnavailable:
            pass   # said once by the store; written again once it answers
        except Exception as exc:
            self.log.warning("%s: heartbeat to %s failed: %s", self.who, self.store.address, exc)


_UNKNOWN = object()   # the stage's stamp could not be read


__all__ = ["STOP_JOIN_S", "StageFollower"]
