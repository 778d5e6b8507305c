"""The root process: its serving loop and what the loop alone touches.

One thread runs a zmq poll loop over the client ROUTER socket and one DEALER
per leaf replica. A client message is checked (`intake`) and a score request
scored inline (`scoring`: fetch, preprocess, trim, send), all CPU work and
no waiting; the `router` then holds it until its leaves answer or its
deadline passes, and writes its one reply. The loop never blocks on a leaf,
so a slow or dead leaf costs only its own models' results.

`RootServer` owns the sockets and the poller, the ping tick, installing a
config the follower thread prepared (between two requests), the heartbeat
record it hands that thread, and the drain on SIGTERM. No other thread
touches what it owns. Scale out with more root processes on the node: they
share the LMDB store and the leaves.

The drain: from SIGTERM every new score request is answered
`shutting_down` (clients go to another root), the requests in flight get
their scores (or their deadline), and the loop runs on until DRAIN_QUIET_S
has passed since SIGTERM, so that clients still sending hear it. Then what
is already queued in the client socket is read and answered too, and that
socket is closed first, before the rest is torn down: every request it took
in gets exactly one reply.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import time

import zmq

from _trim.transport.envelope import id_problem, split_envelope, usable_id
from _trim.transport.frames import NOBLOCK, recv_waiting, send_frames
from _trim.transport.protocol import (
    BAD_REQUEST,
    MAX_HEADER_NBYTES,
    SHUTTING_DOWN,
    ProtocolError,
    check_header,
    load_header,
    pack_header,
    quote,
)
from _trim.transport.sockets import remove_ipc_files
from rootproc.defaults import (
    CLIENT_HWM,
    DRAIN_BATCH,
    DRAIN_LINGER_MS,
    DRAIN_QUIET_S,
    FRAME_HARD_CAP_FACTOR,
    MAX_POLL_MS,
)
from rootproc.featurestore import open_feature_store
from rootproc.featurestore.cache import CachedStore
from rootproc.leaves.links import LeafLinks
from rootproc.metrics import RootMetrics
from rootproc.reply import error_reply, wire_error
from rootproc.rollout.follower import ConfigFollower
from rootproc.rollout.installed import PreparedConfig, load_active_config, prepare_config
from rootproc.router import Router
from rootproc.scoring import Scorer
from rootproc.security import bind_frontend
from rootproc.settings import RootSettings
from signatures.configstore.members import HEARTBEAT_S, MemberStatus
from signatures.schema import FeatureSchema

log = logging.getLogger("rootproc")


class RootServer:
    def __init__(self, cfg: RootSettings, ctx: zmq.Context | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.ctx = ctx or zmq.Context.instance()
        schema = FeatureSchema.load(cfg.schema)
        self.store = open_feature_store(cfg.feature_store, cfg.redis)
        cached = CachedStore(self.store, cfg.cache.size, cfg.cache.ttl_s, cfg.cache.stale_if_error_s)
        self.schema_fingerprint = schema.fingerprint
        self.metrics = RootMetrics(cfg.name)
        self.metrics.watch_cache(cached)
        prepare = functools.partial(prepare_config, schema, self.store.layouts, cfg.trim)
        prepared = prepare(load_active_config(cfg))
        if prepared.pre_full.absent_features:
            log.warning("feature store has no raw field for %s: they take their defaults",
                        ", ".join(prepared.pre_full.absent_features))
        self.poller = zmq.Poller()
        self.links = LeafLinks(self.ctx, cfg, prepared.active, self.metrics, self.poller)
        self.frontend = self.ctx.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.LINGER, DRAIN_LINGER_MS)
        self.frontend.setsockopt(zmq.RCVHWM, CLIENT_HWM)
        self.frontend.setsockopt(zmq.SNDHWM, CLIENT_HWM)
        # Frames up to the hard cap are read and answered `too_large`; a
        # frame past it (an attack, not a mistake) drops the connection
        # before the root buffers gigabytes of it.
        self.frontend.setsockopt(zmq.MAXMSGSIZE, FRAME_HARD_CAP_FACTOR * max(
            cfg.max_request_nbytes, MAX_HEADER_NBYTES))
        self.security = bind_frontend(self.ctx, self.frontend, cfg)  # CURVE on tcp binds, if set
        self.endpoints = [self.frontend.getsockopt(zmq.LAST_ENDPOINT).decode()] if len(cfg.bind) == 1 \
            else list(cfg.bind)
        self.poller.register(self.frontend, zmq.POLLIN)
        self.router = Router(self.name, self.links.pool, self.links.shm, self.metrics, self.reply)
        self.scorer = Scorer(cfg, self.store, cached, self.metrics, self.links.pool, self.router,
                             prepared)
        self.workers_fd = None   # with threads > 1: the batch workers' results (rootproc/workers.py)
        if self.scorer.workers is not None:
            self.workers_fd = self.scorer.workers.fd
            self.poller.register(self.workers_fd, zmq.POLLIN)
        self.draining = False
        self.drain_started = 0.0
        self.stopped = False
        self.metrics.info.labels(self.name, prepared.active.id, cfg.trim, cfg.compression).set(1)
        self.follower = None
        if cfg.config_store:   # follow its stage (rootproc/rollout/follower.py)
            self.metrics.follow_config(prepared.active.generation)
            self.follower = ConfigFollower(cfg.config_store, cfg.stage, name=self.name,
                                           prepared=prepared, prepare=prepare,
                                           errors=self.metrics.config_errors,
                                           schema=schema, settings=cfg.zookeeper).start()

    @property
    def active(self):
        return self.scorer.active

    # -- the loop -------------------------------------------------------------------

    def request_stop(self, *_):
        if not self.draining:
            log.info("%s: draining %d request(s) in flight", self.name, self.router.count)
            self.drain_started = time.monotonic()
        self.draining = True

    def run(self, install_signals: bool = True) -> None:
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        interval = self.cfg.ping_interval_ms / 1000
        next_ping = next_beat = 0.0
        try:
            while not self.drained():
                now = time.monotonic()
                if now >= next_ping:
                    self.links.tick(now)
                    next_ping = now + interval
                if self.follower is not None and now >= next_beat:
                    self.follower.post_heartbeat(self.heartbeat(now))
                    next_beat = now + HEARTBEAT_S
                wake = next_ping
                deadline = self.router.next_deadline()
                if deadline is not None:
                    wake = min(wake, deadline)
                if self.draining:
                    wake = min(wake, self.drain_started + DRAIN_QUIET_S)
                timeout_ms = max(0, min(MAX_POLL_MS, int((wake - now) * 1000) + 1))
                for sock, _ in self.poller.poll(timeout_ms):
                    if sock is self.frontend:
                        self.drain(sock, self.on_client)
                    elif sock == self.workers_fd:
                        self.scorer.collect(self.fail)
                    elif self.links.on_monitor(sock, time.monotonic()):
                        pass
                    else:
                        link = self.links.by_socket(sock)
                        self.drain(sock, lambda frames, link=link: self.router.on_leaf(link, frames))
                self.router.expire(time.monotonic())
                if self.follower is not None:
                    prepared = self.follower.take_config()
                    if prepared is not None:
                        self.install(prepared)
                        next_beat = 0.0   # say so now: `deploy-models` waits for it
                    fleet = self.follower.take_fleet()
                    if fleet is not None:
                        self.links.discover(fleet, time.monotonic())
            while self.drain(self.frontend, self.on_client) == DRAIN_BATCH:
                pass   # what arrived since the last poll, answered before the socket closes
        finally:
            self.close()

    def drained(self) -> bool:
        return (self.draining and self.router.count == 0 and self.scorer.pending == 0
                and time.monotonic() - self.drain_started >= DRAIN_QUIET_S)

    @staticmethod
    def drain(sock, handler) -> int:
        """Hand up to DRAIN_BATCH waiting messages to ``handler``; how many."""
        for n in range(DRAIN_BATCH):
            frames = recv_waiting(sock)
            if frames is None:
                return n
            handler(frames)
        return DRAIN_BATCH

    def install(self, prepared: PreparedConfig) -> None:
        """Serve a config the follower prepared, from the next request on."""
        old = self.scorer.active
        self.scorer.install(prepared)
        self.links.reconcile(prepared.active, time.monotonic())
        m = self.metrics
        m.config_reloads.inc()
        m.config_generation.set(prepared.active.generation)
        if prepared.active.id != old.id:
            try:
                m.info.remove(self.name, old.id, self.cfg.trim, self.cfg.compression)
            except KeyError:
                pass
            m.info.labels(self.name, prepared.active.id, self.cfg.trim,
                          self.cfg.compression).set(1)
            log.info("%s: %s config %s -> %s (generation %d)", self.name, self.cfg.stage,
                     old.id, prepared.active.id, prepared.active.generation)

    def heartbeat(self, now: float) -> MemberStatus:
        """The root's record in the store, less the follower's own fields."""
        active, scorer = self.scorer.active, self.scorer
        gaps = scorer.agreement.current_gaps(active, self.links.pool)
        return MemberStatus("root", self.name, generation=active.generation, bundle=active.id,
                            endpoints=tuple(self.endpoints), schema=self.schema_fingerprint,
                            trim_gaps=tuple(sorted(gaps.items())),
                            trim_gap_counts=tuple(sorted(scorer.gap_counts.items())),
                            leaves=self.links.records(now))

    def close(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        # The client socket first: while it is open it takes in requests that
        # nobody would read any more.
        self.frontend.close(linger=DRAIN_LINGER_MS)
        if self.security is not None:
            self.security.close()
        if self.follower is not None:
            self.follower.stop()
        self.scorer.close()
        self.links.close()
        self.store.close()
        remove_ipc_files(self.endpoints)

    # -- client side ------------------------------------------------------------------

    def on_client(self, frames) -> None:
        envelope, body = split_envelope(frames)
        rid = None
        try:
            if not body:
                raise ProtocolError(BAD_REQUEST, "request has no header frame")
            header = load_header(body[0].buffer)
            # Echoed from here on, whatever else is wrong: a client with many
            # requests in flight matches the error to its request by it.
            rid = usable_id(header)
            problem = id_problem(header, required=header.get("type") != "ping")
            if problem is not None:
                raise ProtocolError(BAD_REQUEST, problem)
            kind = check_header(header)["type"]
            if kind == "ping":
                self.reply(envelope, [self.pong(rid)])
                return
            if kind != "score":
                raise ProtocolError(BAD_REQUEST, f"unknown request type {quote(kind)} "
                                                 "(expected 'score' or 'ping')")
            if self.draining:
                raise ProtocolError(SHUTTING_DOWN, f"root {self.name} is shutting down; retry "
                                                   "on another root")
            self.scorer.score(envelope, header, body)
        except Exception as exc:  # refused, or a bug: answer anyway, keep serving
            self.fail(envelope, rid, wire_error(exc, f"request {rid!r}"))

    def fail(self, envelope, rid, error: ProtocolError) -> None:
        self.metrics.requests.labels("error").inc()
        self.metrics.errors.labels(error.kind).inc()
        self.reply(envelope, [error_reply(rid, error)])

    def reply(self, envelope, frames) -> None:
        try:
            send_frames(self.frontend, list(envelope) + list(frames), NOBLOCK)
        except zmq.Again:
            log.warning("client reply dropped: the client's queue is full")

    def pong(self, rid) -> bytes:
        active = self.scorer.active
        return pack_header({"type": "pong", "id": rid, "ok": True, "role": "root",
                            "name": self.name, "pid": os.getpid(), "config": active.id,
                            "generation": active.generation, "trim": self.cfg.trim,
                            "compression": self.cfg.compression,
                            "models": active.default_models,
                            "leaves": self.links.status(time.monotonic())})
