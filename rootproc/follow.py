"""A root following one stage of the staged config store, without a restart.

`ConfigFollower` owns a thread and what only that thread touches: the store,
the stage's last stamp, the last config it prepared, its error count. The
thread polls the stage file (a ``stat``, then the generation when it
changed), reads and validates the new bundle and compiles its preprocessors
and trim plans (``prepare``), and puts the frozen `PreparedConfig` in a
single-slot handoff; the serving loop takes it between two requests and
installs it (rootproc/server.py). A request already sent to its leaves keeps
the batches it was given; nothing it waits for depends on the config. A
config that cannot be read, parsed or compiled is logged, counted in
``trimmer_root_config_errors_total`` and ignored: the last good config keeps
serving, and the same broken state is reported once, not once per poll.

A stage record that is lost or corrupt is such a state too: the store
says so (signatures/stage_records.py) rather than "no config".

Heartbeats go the other way: the loop builds the root's `MemberRecord` from
its own state and posts it; the thread adds its own fields (config errors,
the last one) and writes it to the store, after publishing the feature
schema the root runs (once), which `trimmer deploy` checks bundles against.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from _trim.errors import StoreError
from signatures.handoff import Handoff
from signatures.members import FOLLOW_POLL_S, MemberRecord
from signatures.store import ConfigStore

from .active import ActiveConfig, PreparedConfig

log = logging.getLogger("rootproc")

class ConfigFollower:
    def __init__(self, store_path: str, stage: str, *, name: str, prepared: PreparedConfig,
                 prepare: Callable[[ActiveConfig, PreparedConfig], PreparedConfig],
                 errors, schema=None, poll_s: float = FOLLOW_POLL_S):
        self.name = name
        self.schema = schema     # published to the store before the first heartbeat
        self.store = ConfigStore(store_path)
        self.stage = stage
        self.poll_s = poll_s
        self.prepare = prepare   # prepare(active, previous): compiled off the loop
        self.errors = errors     # the root's trimmer_root_config_errors counter
        self.prepared = prepared   # the last one prepared: reused when only the generation moves
        self.last_error: str | None = None
        self.error_count = 0
        self._stamp = self.store.stage_stamp(self.stage)
        self._configs: Handoff[PreparedConfig] = Handoff()
        self._heartbeats: Handoff[MemberRecord] = Handoff()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-follower", daemon=True)

    def start(self) -> ConfigFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # -- serving loop side ---------------------------------------------------------

    def take_config(self) -> PreparedConfig | None:
        """A config prepared since the last call, to install now; cheap when none."""
        return self._configs.take()

    def post_heartbeat(self, record: MemberRecord) -> None:
        """The root's record, built on the loop; written at the thread's next poll."""
        self._heartbeats.put(record)

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # a bug here must not stop the following
                log.exception("%s: config follower", self.name)
            record = self._heartbeats.take()
            if record is not None:
                self.write_heartbeat(record)

    def poll(self) -> None:
        stamp = self.store.stage_stamp(self.stage)
        if stamp == self._stamp:
            return
        # Recorded before reading: a change landing between the two is seen
        # again next time, and an unchanged broken state is reported once.
        self._stamp = stamp
        try:
            state = self.store.state(self.stage)
            generation = int(state["generation"])
            if generation == self.prepared.active.generation:
                self.last_error = None
                return
            if generation == 0 < self.prepared.active.generation:   # the audit log gone too
                raise StoreError(f"stage {self.stage} reads as never written, but this root "
                                 f"ran its generation {self.prepared.active.generation}: the "
                                 "stage record is missing")
            if not state.get("bundle"):
                raise ValueError(f"generation {generation} has no active config")
            bundle = self.store.bundle(state["bundle"])
            prepared = self.prepare(ActiveConfig.from_bundle(bundle, generation), self.prepared)
        except Exception as exc:
            self.errors.inc()
            self.error_count += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("%s: ignoring the new %s config in %s: %s; still serving %s (generation %d)",
                      self.name, self.stage, self.store.path, self.last_error,
                      self.prepared.active.id, self.prepared.active.generation)
            return
        self.last_error = None
        self.prepared = prepared
        self._configs.put(prepared)

    def write_heartbeat(self, record: MemberRecord) -> None:
        record = dataclasses.replace(record, config_errors=self.error_count,
                                     last_error=self.last_error)
        try:
            if self.schema is not None:
                self.store.publish_schema(self.schema)
                self.schema = None
            self.store.heartbeat(self.stage, record)
        except Exception as exc:
            log.warning("%s: heartbeat to %s failed: %s", self.name, self.store.path, exc)


__all__ = ["ConfigFollower"]
