"""A root following one stage of the staged config store, without a restart.

`ConfigFollower` owns a thread and what only that thread touches: the store,
the stage's last stamp, the last config it prepared, its error count. The
thread waits for the stage to change (a directory store: a ``stat`` several
times a second; ZooKeeper: a watch on the stage's node, and a look after
every reconnection that compares generations, so a change missed while
disconnected is caught up), reads and validates the new bundle and compiles
its preprocessors and trim plans (``prepare``), and puts the frozen
`PreparedConfig` in a single-slot handoff; the serving loop takes it between
two requests and installs it (rootproc/server.py). A request already sent to
its leaves keeps the batches it was given; nothing it waits for depends on
the config. A config that cannot be read, parsed or compiled is logged,
counted in ``trimmer_root_config_errors_total`` and ignored: the last good
config keeps serving, and the same broken state is reported once, not once
per look. A stage record that is lost or corrupt is such a state too (the
store says so, signatures/configstore/stage_state.py, rather than "no config"). A
store that cannot be reached is not: the root serves what it installed,
and looks again once the store answers.

Heartbeats go the other way: the loop builds the root's `MemberStatus` from
its own state and posts it; the thread adds its own fields (config errors,
the last one) and writes it to the store, after publishing the feature
schema the root runs (once), which `trimmer deploy` checks bundles against.

Where members are ephemeral (ZooKeeper), the thread also keeps the leaves
registered on the stage (`discovered`): leaf name -> the endpoints its live
processes publish (an ipc one only from a leaf on this host) and the CURVE
public key they require, if they publish one (replicas of a name share a
key pair, as in a root config's ``leaves``). Each change goes
to the loop through a second handoff (`take_fleet`), which links to new
endpoints and retires those whose node vanished (rootproc/leaves/links.py). For
`SETTLE_S` after this root's own reconnection, a leaf missing from the
membership is not retired: the leaves are re-registering then too.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable

from _trim.errors import StoreError
from rootproc.rollout.installed import ActiveConfig, PreparedConfig
from signatures.configstore import ConfigStoreUnavailable, open_config_store
from signatures.configstore.members import FOLLOW_POLL_S, FOLLOW_RECHECK_S, HEARTBEAT_S, MemberStatus
from signatures.runtime.handoff import Handoff

log = logging.getLogger("rootproc")
SETTLE_S = 2 * HEARTBEAT_S


def discovered(records, host: str) -> dict[str, tuple[tuple[str, ...], str | None]]:
    """leaf name -> (the endpoints of its registered processes a root on
    ``host`` can reach, the CURVE public key they require, if any)."""
    out: dict[str, list[str]] = {}
    keys: dict[str, str | None] = {}
    for record in records:
        if record.role != "leaf":
            continue
        for ep in record.endpoints:
            if ep.startswith("ipc://") and record.host != host:
                continue   # another host's socket file
            out.setdefault(record.name, [])
            keys.setdefault(record.name, record.curve_key)
            if ep not in out[record.name]:
                out[record.name].append(ep)
    return {name: (tuple(sorted(eps)), keys[name]) for name, eps in sorted(out.items()) if eps}


class ConfigFollower:
    def __init__(self, store_address: str, stage: str, *, name: str, prepared: PreparedConfig,
                 prepare: Callable[[ActiveConfig, PreparedConfig], PreparedConfig],
                 errors, schema=None, poll_s: float = FOLLOW_POLL_S, settings=None,
                 recheck_s: float = FOLLOW_RECHECK_S):
        self.name = name
        self.schema = schema     # published to the store before the first heartbeat
        self.store = open_config_store(store_address, settings=settings)
        self.stage = stage
        self.prepare = prepare   # prepare(active, previous): compiled off the loop
        self.errors = errors     # the root's trimmer_root_config_errors counter
        self.prepared = prepared   # the last one prepared: reused when only the generation moves
        self.last_error: str | None = None
        self.error_count = 0
        self.host = socket.gethostname()
        self._stamp = self._look()
        ephemeral = self.store.ephemeral_members
        self.changes = self.store.changes(stage, recheck_s if ephemeral else poll_s)
        self._wait_s = poll_s
        self._configs: Handoff[PreparedConfig] = Handoff()
        self._heartbeats: Handoff[MemberStatus] = Handoff()
        self._record: MemberStatus | None = None
        self._fleets: Handoff[dict] = Handoff()
        self.fleet: dict | None = None   # the last one handed over
        self._members = self.store.member_watch(stage, self.changes.wake) if ephemeral else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-follower", daemon=True)

    def start(self) -> ConfigFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.changes.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._members is not None:
            self._members.close()
        self.store.close()   # a ZooKeeper member node goes at once

    # -- serving loop side ---------------------------------------------------------

    def take_config(self) -> PreparedConfig | None:
        """A config prepared since the last call, to install now; cheap when none."""
        return self._configs.take()

    def take_fleet(self) -> dict | None:
        """The registered leaves (name -> (endpoints, CURVE key)), when they changed; None
        otherwise, and always where the store has no live membership."""
        return self._fleets.take()

    def post_heartbeat(self, record: MemberStatus) -> None:
        """The root's record, built on the loop; written at once by the thread."""
        self._heartbeats.put(record)
        self.changes.wake()

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            changed = self.changes.wait(self._wait_s)
            if self._stop.is_set():
                break
            try:
                if changed:
                    self.poll()
                if self._members is not None:
                    self.discover()
            except Exception:  # a bug here must not stop the following
                log.exception("%s: config follower", self.name)
            record = self._heartbeats.take()
            if record is None and self.store.ephemeral_members:
                record = self._record   # written only if the store lost it (a new session)
            if record is not None:
                self.write_heartbeat(record)

    def _look(self):
        try:
            return self.store.stage_stamp(self.stage)
        except ConfigStoreUnavailable:
            return _UNKNOWN

    def poll(self) -> None:
        stamp = self._look()
        if stamp is _UNKNOWN or stamp == self._stamp:
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
        except ConfigStoreUnavailable:
            self._stamp = _UNKNOWN   # read it all again once the store answers
            return
        except Exception as exc:
            self.errors.inc()
            self.error_count += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("%s: ignoring the new %s config in %s: %s; still serving %s (generation %d)",
                      self.name, self.stage, self.store.address, self.last_error,
                      self.prepared.active.id, self.prepared.active.generation)
            return
        self.last_error = None
        self.prepared = prepared
        self._configs.put(prepared)

    def discover(self) -> None:
        assert self._members is not None
        records = self._members.refresh()
        if records is None:
            return   # the store does not answer: keep every link
        fleet = discovered(records.values(), self.host)
        if self.fleet is not None and time.monotonic() - self.store.reconnected_at() < SETTLE_S:
            for name, (eps, key) in self.fleet.items():   # keep the vanished until it settles
                now_eps, now_key = fleet.get(name, ((), key))
                fleet[name] = (tuple(sorted(set(now_eps) | set(eps))), now_key)
        if fleet != self.fleet:
            if self.fleet is not None:
                for name in sorted(set(self.fleet) - set(fleet)):
                    log.info("%s: leaf %s left the fleet (no registered process)", self.name, name)
            self.fleet = fleet
            self._fleets.put(fleet)

    def write_heartbeat(self, record: MemberStatus) -> None:
        self._record = record
        record = dataclasses.replace(record, config_errors=self.error_count,
                                     last_error=self.last_error)
        try:
            if self.schema is not None:
                self.store.publish_schema(self.schema)
                self.schema = None
            self.store.heartbeat(self.stage, record)
        except ConfigStoreUnavailable:
            pass   # said once by the store; written again once it answers
        except Exception as exc:
            log.warning("%s: heartbeat to %s failed: %s", self.name, self.store.address, exc)


_UNKNOWN = object()   # the stage's stamp could not be read


__all__ = ["ConfigFollower", "SETTLE_S", "discovered"]
