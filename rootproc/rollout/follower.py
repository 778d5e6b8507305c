"""A root following one stage of the staged config store, without a restart.

`ConfigFollower` is the root's `StageFollower` (signatures/configstore/follower.py:
the thread, the wait for the stage to change, a state it cannot use, the
heartbeat). What it makes of a new state: the bundle read and validated,
its preprocessors and trim plans compiled (``prepare``, the last config it
prepared reused when only the generation moves), the frozen
`PreparedConfig` put in a single-slot handoff; the serving loop takes it
between two requests and installs it (rootproc/server.py). A request
already sent to its leaves keeps the batches it was given; nothing it waits
for depends on the config. A config that cannot be read, parsed or
compiled is logged, counted in ``trimmer_root_config_errors_total`` and
ignored: the last good config keeps serving. A stage record that is lost or
corrupt is such a state too (the store says so,
signatures/configstore/stage_state.py, rather than "no config"). A store that
cannot be reached is not: the root serves what it installed, and looks
again once the store answers.

Heartbeats go the other way: the loop builds the root's `MemberStatus` from
its own state and posts it (`post_heartbeat`), every `HEARTBEAT_S` and when
it installs a config; the thread adds its own fields (config errors, the
last one) and writes it to the store, after publishing the feature schema
the root runs (once), which `trimmer deploy` checks bundles against.

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

import logging
import socket
import time
from collections.abc import Callable

from rootproc.rollout.installed import ActiveConfig, PreparedConfig, SchemaMismatch
from signatures.bundle import Bundle
from signatures.configstore.follower import StageFollower
from signatures.configstore.members import FOLLOW_POLL_S, FOLLOW_RECHECK_S, HEARTBEAT_S
from signatures.runtime.handoff import Handoff

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


class ConfigFollower(StageFollower[PreparedConfig]):
    """The root's follower: each new state of the stage, its bundle read and
    compiled (``prepare``), for the loop to install (`take_config`)."""

    log = logging.getLogger("rootproc")
    kind = "config follower"
    ran = "this root ran"

    def __init__(self, store_address: str, stage: str, *, name: str, prepared: PreparedConfig,
                 prepare: Callable[[ActiveConfig, PreparedConfig], PreparedConfig],
                 errors, schema=None, poll_s: float = FOLLOW_POLL_S, settings=None,
                 recheck_s: float = FOLLOW_RECHECK_S, schema_mismatches=None):
        # No heartbeat_s: the loop's own records are the beat (rootproc/server.py).
        super().__init__(store_address, stage, who=name, errors=errors,
                         generation=prepared.active.generation, schema=schema, poll_s=poll_s,
                         recheck_s=recheck_s, settings=settings)
        self.name = name
        self.schema_mismatches = schema_mismatches   # counter of bundles refused for the schema
        self.prepare = prepare   # prepare(active, previous): compiled off the loop
        self.prepared = prepared   # the last one prepared: reused when only the generation moves
        self.host = socket.gethostname()
        self._fleets: Handoff[dict] = Handoff()
        self.fleet: dict | None = None   # the last one handed over
        self._members = self.store.member_watch(stage, self.changes.wake) \
            if self.store.ephemeral_members else None

    # -- serving loop side ---------------------------------------------------------

    def take_config(self) -> PreparedConfig | None:
        """A config prepared since the last call, to install now; cheap when none."""
        return self.updates.take()

    def take_fleet(self) -> dict | None:
        """The registered leaves (name -> (endpoints, CURVE key)), when they changed; None
        otherwise, and always where the store has no live membership."""
        return self._fleets.take()

    # -- the thread ----------------------------------------------------------------

    def on_stage(self, generation: int, state: dict, bundle: Bundle | None) -> PreparedConfig:
        if bundle is None:
            raise ValueError(f"generation {generation} has no active config")
        try:
            self.prepared = self.prepare(ActiveConfig.from_bundle(bundle, generation),
                                         self.prepared)
        except SchemaMismatch:
            if self.schema_mismatches is not None:
                self.schema_mismatches.inc()
            raise
        return self.prepared

    def describe_problem(self, error: str) -> str:
        return (f"ignoring the new {self.stage} config in {self.store.address}: {error}; "
                f"still serving {self.prepared.active.id} "
                f"(generation {self.prepared.active.generation})")

    def after_look(self) -> None:
        if self._members is not None:
            self.discover()

    def release(self) -> None:
        if self._members is not None:
            self._members.close()

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
                    self.log.info("%s: leaf %s left the fleet (no registered process)", self.name, name)
            self.fleet = fleet
            self._fleets.put(fleet)


__all__ = ["ConfigFollower", "SETTLE_S", "discovered"]
