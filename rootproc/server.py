"""The root process: serve scoring requests by fanning trimmed batches out to leaves.

One thread runs a zmq poll loop over the client ROUTER socket and one DEALER
per leaf replica. A request is checked (`intake`), fetched, preprocessed,
trimmed and sent (`fanout`) inline, all CPU work and no waiting, then parked
until its leaves answer or its deadline passes (`pending`); the loop never
blocks on a leaf, so a slow or dead leaf costs only its own models' results.
Scale out with more root processes on the node: they share the LMDB store
and the leaves.
"""
from __future__ import annotations

import logging
import os
import signal
import time
import traceback

import zmq

import _trim
from _trim.transport.protocol import (BAD_REQUEST, INTERNAL, MAX_HEADER_NBYTES, SHUTTING_DOWN, ProtocolError,
                            error_header, pack_header, unpack_header)
from _trim.transport.sockets import remove_ipc_files
from _trim.transport.envelope import split_envelope, usable_id
from _trim.transport.frames import NOBLOCK, recv_waiting, send_frames
from _trim.transport.shm import reap_stale_segments
from signatures.schema import FeatureSchema

from .active import ActiveConfig, PreparedConfig, load_active_config, prepare_config
from .agreement import Agreement
from .cache import CachedStore
from .config import RootConfig
from .security import bind_frontend
from .fanout import FanOut
from .follow import ConfigFollower
from .intake import parse_score, resolve_models
from .leaves import LeafLink, LeafPool, wanted_leaves
from .metrics import RootMetrics
from .pending import Pending, PendingRequests
from .shm_link import ShmLinks
from .store import FeatureStore

log = logging.getLogger("rootproc")

# A client frame up to this many times the largest valid one is read and
# answered `too_large`; past it, the connection is dropped instead.
FRAME_HARD_CAP_FACTOR = 16

# How long replies may take to leave after a drain before the socket closes.
DRAIN_LINGER_MS = 2000


class RootServer:
    def __init__(self, cfg: RootConfig, ctx: zmq.Context | None = None):
        self.cfg = cfg
        self.name = cfg.name
        self.schema = FeatureSchema.load(cfg.schema)
        self.store = FeatureStore(cfg.feature_store)
        self.cached = CachedStore(self.store, cfg.cache.size, cfg.cache.ttl_s)
        self.metrics = RootMetrics(cfg.name)
        self.metrics.watch_cache(self.cached)
        self.ctx = ctx or zmq.Context.instance()
        self.pool = None
        self.apply_config(load_active_config(cfg))
        # The root config's leaves, and those the bundle's placement gives an
        # endpoint; kept in step with each new config (`sync_leaves`).
        leaves = wanted_leaves(cfg.leaves, self.active)
        self.pool = LeafPool(self.ctx, leaves, self.active.placement, cfg.compression,
                             cfg.health_timeout_ms / 1000)
        reap_stale_segments()
        try:
            self.shm = ShmLinks(self.pool.links, cfg.shm, {l.name: l.transport for l in leaves},
                                self.metrics.registry)
        except BaseException:
            self.pool.close()
            raise
        self.frontend = self.ctx.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.LINGER, DRAIN_LINGER_MS)
        self.frontend.setsockopt(zmq.RCVHWM, 100_000)
        self.frontend.setsockopt(zmq.SNDHWM, 100_000)
        # Frames up to the hard cap are read and answered `too_large`; a
        # frame past it (an attack, not a mistake) drops the connection
        # before the root buffers gigabytes of it.
        self.frontend.setsockopt(zmq.MAXMSGSIZE, FRAME_HARD_CAP_FACTOR * max(
            cfg.max_request_nbytes, MAX_HEADER_NBYTES))
        self.security = bind_frontend(self.ctx, self.frontend, cfg)  # CURVE on tcp binds, if set
        self.endpoints = [self.frontend.getsockopt(zmq.LAST_ENDPOINT).decode()] if len(cfg.bind) == 1 \
            else list(cfg.bind)
        self.poller = zmq.Poller()
        self.poller.register(self.frontend, zmq.POLLIN)
        for link in self.pool.links:
            self.poller.register(link.socket, zmq.POLLIN)
        self.pending = PendingRequests(self.name, self.metrics, self.reply)
        self.fanout = FanOut(self.pool, self.shm, self.metrics, self.pending, self.pump)
        self.draining = False
        self.stopped = False
        self.metrics.info.labels(self.name, self.active.id, cfg.trim, cfg.compression).set(1)
        self.agreement = Agreement(self.name)
        self.gap_counts: dict[str, int] = {}   # version -> requests sent untrimmed for it
        # With a staged config store, follow its stage (see rootproc/follow.py).
        self.follower = (ConfigFollower(self, cfg.config_store, cfg.stage).start()
                         if cfg.config_store else None)

    # -- config -----------------------------------------------------------------

    def apply_config(self, active: ActiveConfig) -> None:
        """Compile what a config implies (preprocessors, trim plans) and install it."""
        prepared = prepare_config(self.schema, self.store.layouts, self.cfg.trim, active)
        if prepared.pre_full.absent_features:
            log.warning("feature store has no raw field for %s: they take their defaults",
                        ", ".join(prepared.pre_full.absent_features))
        self.install_config(prepared)

    def install_config(self, prepared: PreparedConfig) -> None:
        """Swap in a compiled config, between two requests, in one step."""
        self.prepared = prepared
        self.active = prepared.active
        self.pre_full, self.pre_used = prepared.pre_full, prepared.pre_used
        self.plans: dict = dict(prepared.plans)
        if self.pool is not None:
            self.sync_leaves(time.monotonic())

    def sync_leaves(self, now: float) -> None:
        """Link to leaves the new config adds; retire links it no longer names.
        A retiring link takes no new request; requests it carries finish or
        reach their deadline (all of them by ``max_deadline_ms`` from now)
        before `reap_retired` closes it."""
        leaves = wanted_leaves(self.cfg.leaves, self.active, self.pool)
        added, _ = self.pool.reconcile(leaves, self.active.placement,
                                       now + self.cfg.max_deadline_ms / 1000)
        for link in added:
            self.poller.register(link.socket, zmq.POLLIN)
            try:
                self.shm.add(link, self.pool.transport(link))
            except Exception as exc:  # no ring: the link still works over its socket
                log.error("leaf %s (%s): no shared-memory ring: %s", link.name, link.endpoint, exc)
            # Pinged now, not at the next tick: routing waits for its first pong.
            link.send([pack_header({"type": "ping", "id": "ping-new"})])
        self.reap_retired(now)

    def reap_retired(self, now: float) -> None:
        """Close retiring links with nothing left in flight and no shared-memory
        slot the leaf may still read, or past the last deadline they carried."""
        for link in self.pool.retiring:
            drained = link.outstanding <= 0 and not self.shm.holds(link)
            if not (drained or now >= link.drain_until):
                continue
            if not drained:
                log.warning("leaf %s (%s): closing a retired link with %d request(s) past their "
                            "deadline", link.name, link.endpoint, link.outstanding)
            self.poller.unregister(link.socket)
            self.shm.remove(link)
            self.pool.forget(link)
            for gauge in (self.metrics.leaf_up, self.metrics.leaf_outstanding):
                try:
                    gauge.remove(link.name, link.endpoint)
                except KeyError:
                    pass
            log.info("leaf %s (%s): retired link closed", link.name, link.endpoint)

    def plan_for(self, layout, key: str | None):
        """The trim plan of ``key`` (None: every column) on ``layout``, compiled once."""
        cache_key = (layout.fingerprint, key)
        plan = self.plans.get(cache_key)
        if plan is None:
            names = layout.names if key is None else self.active.features_for(key)
            plan = _trim.compile_plan(layout, names)
            self.plans[cache_key] = plan
        return plan

    # -- the loop -------------------------------------------------------------------

    def request_stop(self, *_):
        if not self.draining:
            log.info("%s: draining %d request(s) in flight", self.name, self.pending.count)
        self.draining = True

    def run(self, install_signals: bool = True) -> None:
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        interval = self.cfg.ping_interval_ms / 1000
        next_ping = 0.0
        try:
            while not (self.draining and self.pending.count == 0):
                now = time.monotonic()
                if now >= next_ping:
                    self.pool.ping_all()
                    self.update_health(now)
                    next_ping = now + interval
                wake = next_ping
                deadline = self.pending.next_deadline()
                if deadline is not None:
                    wake = min(wake, deadline)
                timeout_ms = max(0, min(100, int((wake - now) * 1000) + 1))
                for sock, _ in self.poller.poll(timeout_ms):
                    if sock is self.frontend:
                        self.drain_socket(sock, self.on_client)
                    else:
                        link = self.pool.by_socket[sock]
                        self.drain_socket(sock, lambda frames, l=link: self.on_leaf(l, frames))
                self.pending.expire(time.monotonic())
                if self.follower is not None:
                    self.follower.tick()
        finally:
            self.close()

    @staticmethod
    def drain_socket(sock, handler, limit: int = 256) -> None:
        for _ in range(limit):
            frames = recv_waiting(sock)
            if frames is None:
                return
            handler(frames)

    def update_health(self, now: float) -> None:
        self.shm.check_leaves()
        self.reap_retired(now)
        for link in self.pool.links:
            up = link.healthy(now, self.pool.health_timeout_s)
            self.metrics.leaf_up.labels(link.name, link.endpoint).set(1 if up else 0)
            self.metrics.leaf_outstanding.labels(link.name, link.endpoint).set(link.outstanding)

    def close(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.follower is not None:
            self.follower.stop()
        self.frontend.close(linger=DRAIN_LINGER_MS)
        if self.security is not None:
            self.security.close()
        self.pool.close()
        self.shm.close()
        self.store.close()
        remove_ipc_files(self.endpoints)

    # -- client side ------------------------------------------------------------------

    def on_client(self, frames) -> None:
        envelope, body = split_envelope(frames)
        rid = None
        try:
            if not body:
                raise ProtocolError(BAD_REQUEST, "request has no header frame")
            header = unpack_header(body[0].buffer)
            rid = usable_id(header)
            kind = header["type"]
            if kind == "ping":
                self.reply(envelope, [self.pong(rid)])
                return
            if kind != "score":
                raise ProtocolError(BAD_REQUEST, f"unknown request type {kind!r} "
                                                 "(expected 'score' or 'ping')")
            if self.draining:
                raise ProtocolError(SHUTTING_DOWN, f"root {self.name} is shutting down; retry "
                                                   "on another root")
            self.score(envelope, header, body)
        except ProtocolError as exc:
            self.fail(envelope, rid, exc.kind, str(exc), exc.details)
        except Exception as exc:  # a bug: answer anyway, keep serving
            log.error("request %r: internal error\n%s", rid, traceback.format_exc())
            self.fail(envelope, rid, INTERNAL, f"internal error: {type(exc).__name__}: {exc}", {})

    def fail(self, envelope, rid, kind: str, message: str, details: dict) -> None:
        self.metrics.requests.labels("error").inc()
        self.metrics.errors.labels(kind).inc()
        self.reply(envelope, [error_header(rid, kind, message, **details)])

    def reply(self, envelope, frames) -> None:
        try:
            send_frames(self.frontend, list(envelope) + list(frames), NOBLOCK)
        except zmq.Again:
            log.warning("client reply dropped: the client's queue is full")

    def pong(self, rid) -> bytes:
        return pack_header({"type": "pong", "id": rid, "ok": True, "role": "root",
                            "name": self.name, "pid": os.getpid(), "config": self.active.id,
                            "generation": self.active.generation, "trim": self.cfg.trim,
                            "compression": self.cfg.compression,
                            "models": self.active.default_models,
                            "leaves": self.pool.status(time.monotonic(), self.shm.describe)})

    def score(self, envelope, header: dict, body) -> None:
        t0 = time.perf_counter()
        cfg = self.cfg
        req = parse_score(header, body, cfg)
        keys = resolve_models(self.active, self.pool, req.models, time.monotonic())
        n = len(req.candidates)

        # Fetch.
        cand_ids = req.candidates.tolist()
        user_recs = self.cached.get("user", [req.user])
        cand_recs = self.cached.get("candidate", cand_ids)
        self.fill_missing("user", [req.user], user_recs)
        self.fill_missing("candidate", cand_ids, cand_recs)
        t_fetch = time.perf_counter()

        # Preprocess: the union the config uses, or everything when a model is
        # outside the config or disagrees with its leaf (fail open), or trimming is off.
        now = time.monotonic()
        gaps = [k for k in keys
                if self.agreement.gap_reason(self.active, k, self.pool.candidates(k, now))]
        pre = self.pre_full if (gaps or cfg.trim == "off") else self.pre_used
        batch = pre.build(user_recs, cand_recs)
        t_pre = time.perf_counter()

        # Trim and send, model by model.
        now = time.monotonic()
        pending = Pending(req.rid, envelope, n, [], now + req.deadline_ms / 1000, t0, {})
        untrimmed = _trim.encoded_nbytes(self.plan_for(batch.layout, None), batch)
        for idx, key in enumerate(keys):
            gap = key in gaps
            if gap:
                self.metrics.trim_gaps.labels(key).inc()
                self.gap_counts[key] = self.gap_counts.get(key, 0) + 1
            trimmed = cfg.trim == "on" and not gap
            result = {"model": key, "ok": False, "trimmed": trimmed}
            pending.results.append(result)
            if n == 0:
                result.update(ok=True, leaf=None, bytes_sent=0)
                pending.frames[idx] = b""
                continue
            try:
                plan = self.plan_for(batch.layout, key if trimmed else None)
                self.fanout.send(pending, idx, key, plan, batch, untrimmed, now)
            except Exception as exc:
                # Other models may already be in flight: this request's one reply
                # comes from `pending`, so a failure here stays this model's result.
                log.error("request %r, %s: internal error\n%s", req.rid, key,
                          traceback.format_exc())
                result["error"] = {"kind": INTERNAL, "message": f"internal error: "
                                   f"{type(exc).__name__}: {exc}"}
        t_trim = time.perf_counter()
        pending.timing = {"fetch": t_fetch - t0, "preprocess": t_pre - t_fetch, "trim": t_trim - t_pre}
        pending.t_sent = t_trim
        m = self.metrics.latency
        m.labels("fetch").observe(t_fetch - t0)
        m.labels("preprocess").observe(t_pre - t_fetch)
        m.labels("trim").observe(t_trim - t_pre)
        self.pending.park(pending)

    def fill_missing(self, source: str, ids, records) -> None:
        missing = [k for k, r in enumerate(records) if r is None]
        if not missing:
            return
        self.metrics.missing.labels(source).inc(len(missing))
        if self.cfg.missing == "fail":
            shown = [ids[k] for k in missing[:20]]
            raise ProtocolError(BAD_REQUEST, f"{len(missing)} {source} id(s) not in the feature "
                                             f"store: {', '.join(map(str, shown))}"
                                             f"{' ...' if len(missing) > 20 else ''}",
                                missing=shown, source=source)
        default = self.store.layout(source).default_record
        for k in missing:
            records[k] = default

    # -- leaf side ----------------------------------------------------------------

    def pump(self, link: LeafLink, timeout_s: float) -> None:
        """Read ``link``'s replies for up to ``timeout_s``: waiting for a shm slot."""
        if link.socket.poll(max(1, int(timeout_s * 1000))):
            self.drain_socket(link.socket, lambda frames: self.on_leaf(link, frames))

    def on_leaf(self, link: LeafLink, frames) -> None:
        try:
            header = unpack_header(frames[0].buffer)
        except ProtocolError as exc:
            log.warning("leaf %s (%s) sent an unreadable reply: %s", link.name, link.endpoint, exc)
            return
        try:
            if header["type"] == "pong":
                link.on_pong(header, time.monotonic())
                return
            mid = header.get("id")
            if not isinstance(mid, str):
                log.warning("leaf %s (%s) sent a %r reply without a usable id: dropped",
                            link.name, link.endpoint, header["type"])
                return
            self.shm.replied(link, mid)  # even after the deadline: the slot is free
            self.pending.on_reply(link, header, frames)
        except Exception:  # a bug must not stop the loop; the deadline answers the request
            log.exception("leaf %s (%s): reply not handled", link.name, link.endpoint)
