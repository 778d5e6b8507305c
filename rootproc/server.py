"""The root process's serving loop and what the loop alone touches.

One thread runs a zmq poll loop over the client ROUTER socket and one DEALER
per leaf replica. A client message is checked (`intake`) and a score
request handed to the scorer (`scoring`): a worker thread fetches and builds
its batch, and the loop sends its models a slice at a time between polls, so
that no request keeps it from its sockets for longer than one model's
message; the `router` then holds it until its leaves answer or its deadline
passes, and sends its one reply. The loop never blocks on a leaf, so a slow
or dead leaf costs only its own models' results.

`RootServer` runs over the parts rootproc/app.py builds and closes (`Root`):
it reads the client socket and the links through the poller, runs the ping
tick, installs a config the follower thread prepared (between two
requests), hands that thread the heartbeat record, answers what never
reaches the router (pings, refused requests) and drains on SIGTERM. No
other thread touches what it runs. Scale out with more root processes on
the node: they share the LMDB store and the leaves.

The drain: from SIGTERM every new score request is answered
`shutting_down` (clients go to another root), the requests in flight get
their scores (or their deadline), and the loop runs on until DRAIN_QUIET_S
has passed since SIGTERM, so that clients still sending hear it. Then what
is already queued in the client socket is read and answered too, and `run`
returns; `Root.close` closes that socket first, before the rest is torn
down: every request it took in gets exactly one reply.
"""
from __future__ import annotations

import logging
import os
import signal
import time

import zmq

from _trim.transport.envelope import id_problem, split_envelope, usable_id
from _trim.transport.frames import MAX_MESSAGE_FRAMES, Cut, recv_waiting
from _trim.transport.model_key import ModelKey
from _trim.transport.protocol import (
    BAD_REQUEST,
    SHUTTING_DOWN,
    TOO_LARGE,
    ProtocolError,
    check_header,
    load_header,
    pack_header,
    quote,
)
from rootproc.defaults import DRAIN_BATCH, DRAIN_QUIET_S, MAX_POLL_MS
from rootproc.frontend import ClientReplies, ClientSocket
from rootproc.leaves.agreement import served_versions
from rootproc.leaves.links import LeafLinks
from rootproc.metrics import RootMetrics
from rootproc.reply import wire_error
from rootproc.rollout.follower import ConfigFollower
from rootproc.rollout.installed import PreparedConfig
from rootproc.router import Router
from rootproc.scoring import Scorer
from rootproc.settings import RootSettings
from signatures.configstore.members import HEARTBEAT_S, MemberStatus
from signatures.runtime.probes import Probes

log = logging.getLogger("rootproc")


class RootServer:
    def __init__(self, *, cfg: RootSettings, client: ClientSocket, replies: ClientReplies,
                 poller: zmq.Poller, links: LeafLinks, router: Router, scorer: Scorer,
                 follower: ConfigFollower | None, metrics: RootMetrics, schema_fingerprint: str,
                 probes: Probes | None = None):
        self.cfg = cfg
        self.probes = probes if probes is not None else Probes()
        self.name = cfg.name
        self.frontend = client.socket
        self.hard_cap = client.hard_cap
        router.reply_cap = client.hard_cap
        self.endpoints = client.endpoints
        self.replies = replies
        self.poller = poller
        self.links = links
        self.router = router
        self.scorer = scorer
        self.follower = follower
        self.metrics = metrics
        self.schema_fingerprint = schema_fingerprint
        self.poller.register(self.frontend, zmq.POLLIN)
        self.workers_fd = self.scorer.workers.fd   # the batch workers' results (rootproc/workers.py)
        self.poller.register(self.workers_fd, zmq.POLLIN)
        self.draining = False
        self.drain_started = 0.0

    # -- the loop -------------------------------------------------------------------

    def request_stop(self, *_):
        if not self.draining:
            log.info("%s: draining %d request(s) in flight", self.name, self.router.count)
            self.drain_started = time.monotonic()
        self.draining = True
        self.probes.set_ready(False, f"root {self.name} is draining")

    def run(self, install_signals: bool = True) -> None:
        """Serve until a stop request's drain completes, the client socket
        read to its end; the caller (rootproc/app.py) then closes it first."""
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        interval = self.cfg.ping_interval_ms / 1000
        next_ping = next_beat = 0.0
        while not self.drained():
            now = time.monotonic()
            self.probes.beat(now)
            if now >= next_ping:
                self.links.tick(now)
                self.probes.set_ready(*self.readiness(now))
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
            if self.scorer.loop_has_work:
                timeout_ms = 0   # models still to send: read what is waiting, then go on
            for sock, _ in self.poller.poll(timeout_ms):
                if sock is self.frontend:
                    self.drain(sock, self.on_client, self.hard_cap)
                elif sock == self.workers_fd:
                    self.scorer.collect(self.replies.error)
                elif self.links.on_monitor(sock, time.monotonic()):
                    pass
                else:
                    link = self.links.by_socket(sock)
                    self.drain(sock, lambda frames, link=link: self.router.on_leaf(link, frames),
                               self.hard_cap)
            self.scorer.send_some(self.replies.error)
            self.router.expire(time.monotonic())
            if self.follower is not None:
                prepared = self.follower.take_config()
                if prepared is not None:
                    self.install(prepared)
                    self.probes.set_ready(*self.readiness(time.monotonic()))
                    next_beat = 0.0   # say so now: `deploy-models` waits for it
                fleet = self.follower.take_fleet()
                if fleet is not None:
                    self.links.discover(fleet, time.monotonic())
        while self.drain(self.frontend, self.on_client, self.hard_cap) == DRAIN_BATCH:
            pass   # what arrived since the last poll, answered before the socket closes

    def drained(self) -> bool:
        return (self.draining and self.router.count == 0 and self.scorer.pending == 0
                and time.monotonic() - self.drain_started >= DRAIN_QUIET_S)

    @staticmethod
    def drain(sock, handler, max_nbytes: int) -> int:
        """Hand up to DRAIN_BATCH waiting messages to ``handler``; how many.
        A message past MAX_MESSAGE_FRAMES or ``max_nbytes`` comes as its
        first frames (a `Cut`: rule `envelope.frames-limit`)."""
        for n in range(DRAIN_BATCH):
            frames = recv_waiting(sock, MAX_MESSAGE_FRAMES, max_nbytes)
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

    def readiness(self, now: float) -> tuple[bool, str]:
        """Ready (/readyz): a config installed, not draining, and each model of
        the config served by a healthy replica (a version of it: mid-rollout
        the leaves may serve another, which requests get); else why not."""
        active = self.scorer.active
        if self.draining:
            return False, f"root {self.name} is draining"
        served = {ModelKey(k).name for k in served_versions(self.links.pool, now)}
        unserved = [k for k in active.default_models if ModelKey(k).name not in served]
        if not unserved:
            return True, (f"config {active.id} (generation {active.generation}), "
                          f"{len(active.default_models)} model(s) served")
        timeout_s = self.links.pool.health_timeout_s
        out = [f"{link.name} ({link.endpoint}) {link.out_reason(now, timeout_s)}"
               for link in self.links.pool.links if not link.healthy(now, timeout_s)]
        return False, (f"config {active.id}: no healthy leaf replica serves "
                       f"{', '.join(unserved)}" + (f"; out of rotation: {'; '.join(out)}"
                                                   if out else ""))

    def heartbeat(self, now: float) -> MemberStatus:
        """The root's record in the store, less the follower's own fields."""
        active, scorer = self.scorer.active, self.scorer
        gaps = scorer.agreement.current_gaps(active, self.links.pool)
        return MemberStatus("root", self.name, generation=active.generation, bundle=active.id,
                            endpoints=tuple(self.endpoints), schema=self.schema_fingerprint,
                            trim_gaps=tuple(sorted(gaps.items())),
                            trim_gap_counts=tuple(sorted(scorer.gap_counts.items())),
                            leaves=self.links.records(now))

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
            if isinstance(frames, Cut):   # answered, whatever it asks: the rest is gone
                raise ProtocolError(BAD_REQUEST if frames.reason == "frames" else TOO_LARGE,
                                    f"{frames.describe(len(envelope))}; a request has at "
                                    "most 2 frames (header, candidates)",
                                    frames=frames.n_frames - len(envelope),
                                    nbytes=frames.nbytes, limit=frames.limit)
            kind = check_header(header)["type"]
            if kind == "ping":
                self.replies.send(envelope, [self.pong(rid)])
                return
            if kind != "score":
                raise ProtocolError(BAD_REQUEST, f"unknown request type {quote(kind)} "
                                                 "(expected 'score' or 'ping')")
            if self.draining:
                raise ProtocolError(SHUTTING_DOWN, f"root {self.name} is shutting down; retry "
                                                   "on another root")
            self.scorer.score(envelope, header, body)
        except Exception as exc:  # refused, or a bug: answer anyway, keep serving
            self.replies.error(envelope, rid, wire_error(exc, f"request {rid!r}"))

    def pong(self, rid) -> bytes:
        active = self.scorer.active
        return pack_header({"type": "pong", "id": rid, "ok": True, "role": "root",
                            "name": self.name, "pid": os.getpid(), "config": active.id,
                            "generation": active.generation, "trim": self.cfg.trim,
                            "compression": self.cfg.compression,
                            "models": active.default_models,
                            "leaves": self.links.status(time.monotonic())})
