"""A root following one stage of the staged config store, without a restart.

A thread polls the stage file (a ``stat``, then the generation when it
changed), reads and validates the new bundle and compiles its preprocessors
and trim plans (`prepare_config`), then leaves the result for the serving
loop, which installs it between two requests (`tick`). A request already
sent to its leaves keeps the batches it was given; nothing it waits for
depends on the config. A config that cannot be read, parsed or compiled is
logged, counted in ``trimmer_root_config_errors_total`` and ignored: the
last good config keeps serving, and the same broken state is reported once,
not once per poll. Installing a config also brings the root's leaf links in
line with it (`RootServer.sync_leaves`). The thread also writes the root's
heartbeat to the store, with the leaf links it has.
"""
from __future__ import annotations

import logging
import threading
import time

from prometheus_client import Counter, Gauge

from signatures.members import FOLLOW_POLL_S, HEARTBEAT_S, LinkRecord, MemberRecord
from signatures.store import ConfigStore

from .active import ActiveConfig, PreparedConfig, prepare_config

log = logging.getLogger("rootproc")



class ConfigFollower:
    def __init__(self, server, store_path: str, stage: str, *, poll_s: float = FOLLOW_POLL_S,
                 heartbeat_s: float = HEARTBEAT_S):
        self.server = server
        self.store = ConfigStore(store_path)
        self.stage = stage
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.prepared: PreparedConfig = server.prepared
        self._waiting: PreparedConfig | None = None   # handed from the thread to the loop
        self._stamp = self.store.stage_stamp(self.stage)
        self.last_error: str | None = None
        self.error_count = 0
        r = server.metrics.registry
        self.errors = Counter("trimmer_root_config_errors", "new configs ignored because they "
                              "could not be read, parsed or compiled", registry=r)
        self.reloads = Counter("trimmer_root_config_reloads", "configs installed while running",
                               registry=r)
        self.generation = Gauge("trimmer_root_config_generation",
                                "store generation of the active config", registry=r)
        self.generation.set(self.prepared.active.generation)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-follower", daemon=True)

    def start(self) -> "ConfigFollower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # -- serving loop side ---------------------------------------------------------

    def tick(self) -> None:
        """Install a config the thread prepared; cheap when there is none."""
        prepared = self._waiting
        if prepared is None:
            return
        self._waiting = None
        old = self.server.active
        self.server.install_config(prepared)
        self.reloads.inc()
        self.generation.set(prepared.active.generation)
        if prepared.active.id != old.id:
            m = self.server.metrics
            try:
                m.info.remove(self.server.name, old.id, self.server.cfg.trim, self.server.cfg.compression)
            except KeyError:
                pass
            m.info.labels(self.server.name, prepared.active.id, self.server.cfg.trim,
                          self.server.cfg.compression).set(1)
            log.info("%s: %s config %s -> %s (generation %d)", self.server.name, self.stage,
                     old.id, prepared.active.id, prepared.active.generation)

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        next_beat = 0.0
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # a bug here must not stop the following
                log.exception("%s: config follower", self.server.name)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                self.beat()

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
            if not state.get("bundle"):
                raise ValueError(f"generation {generation} has no active config")
            bundle = self.store.bundle(state["bundle"])
            active = ActiveConfig.from_bundle(bundle, generation)
            srv = self.server
            prepared = prepare_config(srv.schema, srv.store.layouts, srv.cfg.trim, active,
                                      self.prepared)
        except Exception as exc:
            self.errors.inc()
            self.error_count += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("%s: ignoring the new %s config in %s: %s; still serving %s (generation %d)",
                      self.server.name, self.stage, self.store.path, self.last_error,
                      self.prepared.active.id, self.prepared.active.generation)
            return
        self.last_error = None
        self.prepared = prepared
        self._waiting = prepared

    def beat(self) -> None:
        srv = self.server
        active = srv.active
        record = MemberRecord(
            "root", srv.name, generation=active.generation, bundle=active.id,
            endpoints=tuple(srv.endpoints),
            trim_gaps=tuple(sorted(srv.agreement.current_gaps(active, srv.pool).items())),
            trim_gap_counts=tuple(sorted(srv.gap_counts.items())),
            config_errors=self.error_count, last_error=self.last_error,
            leaves=tuple(LinkRecord(l["leaf"], l["endpoint"], l["healthy"], l["transport"],
                                    bool(l.get("retiring")))
                         for l in srv.pool.status(time.monotonic(), srv.shm.describe)))
        try:
            self.store.heartbeat(self.stage, record)
        except Exception as exc:
            log.warning("%s: heartbeat to %s failed: %s", srv.name, self.store.path, exc)


__all__ = ["ConfigFollower"]
